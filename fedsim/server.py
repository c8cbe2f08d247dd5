"""The server side of a run: strategy from the scenario, seeded client sampling, central evaluation, start().

`server_main` is what a Flower ServerApp's main does; fedsim's runtimes only supply the Grid. It also writes the
per-round checkpoint (fedsim.checkpoint) right after central evaluation: it is the one place that sees the strategy,
the Grid and the privacy monitor together (RunRecorder sees metrics only).
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from fedsim import checkpoint
from fedsim.arrays import record_to_state, state_to_record
from fedsim.budget import BudgetExhausted, PrivacyMonitor
from fedsim.clients.app import REPORT_TRAIN_LOSS
from fedsim.clients.dp_sgd import private_model
from fedsim.clients.train import LocalTraining
from fedsim.data import FederatedData, federated_data
from fedsim.errors import FedsimError, ScenarioError
from fedsim.evaluation import evaluate
from fedsim.models import initial_model
from fedsim.privacy import noise_multiplier
from fedsim.results import RunRecorder
from fedsim.scenario import Scenario
from fedsim.seeding import derive_seed
from fedsim.strategies import build_strategy
from fedsim.strategies.dp_fedavg import PoissonDPFedAvg
from fedsim.strategies.unlearning import Unlearning
from fedsim.unlearning.forget import check_requests
from fedsim.unlearning.history import HistoryStore
from fedsim.unlearning.metrics import UnlearningEvaluator


@dataclass
class Prepared:
    """Everything a run needs, built (and so validated) before anything is written."""

    scenario: Scenario
    data: FederatedData
    model: nn.Module
    strategy: Strategy


def client_dp_noise(scenario: Scenario) -> float:
    """The server's noise multiplier for client-level DP: given, or the smallest that fits the budget for all rounds."""
    p = scenario.privacy
    if p.noise_multiplier is not None:
        return p.noise_multiplier
    return noise_multiplier(p.target_epsilon, p.q, scenario.run.rounds, p.delta, p.accountant)


def label_privacy(scenario: Scenario) -> dict:
    """The label-DP ledger of aggregate responses: one Laplace release per client, so epsilon never grows."""
    b = scenario.bags
    return {"mechanism": "laplace", "epsilon": b.epsilon, "delta": 0.0, "k": b.k, "clip": b.clip,
            "released": "once per client; training is post-processing"}


def make_strategy(scenario: Scenario) -> Strategy:
    s, n = scenario.strategy, scenario.data.partitioner.num_partitions
    if scenario.privacy is not None and scenario.privacy.mode == "client-dp":
        if s.name != "fedavg" or s.params:
            raise ScenarioError("strategy.name", "client-dp runs DP-FedAvg (Poisson sampling, clipping, noise)",
                                "set strategy.name = 'fedavg' without extra parameters")
        p = scenario.privacy
        return PoissonDPFedAvg(noise_multiplier=client_dp_noise(scenario), clipping_norm=p.clipping_norm,
                               sample_rate=p.q, seed=scenario.run.seed, fraction_evaluate=s.fraction_evaluate,
                               min_evaluate_nodes=min(2, n) if s.fraction_evaluate > 0 else 0, min_available_nodes=1)
    try:
        return build_strategy(
            s.name,
            s.params,
            fraction_train=s.fraction_train,
            fraction_evaluate=s.fraction_evaluate,
            min_train_nodes=s.min_train_nodes or min(2, n),
            min_evaluate_nodes=s.min_evaluate_nodes if s.min_evaluate_nodes is not None else
            (min(2, n) if s.fraction_evaluate > 0 else 0),
            min_available_nodes=s.min_available_nodes or min(2, n),
            defaults={"proximal_mu": scenario.client.proximal_mu, "client_learning_rate": scenario.client.lr,
                      "margin_lambda": scenario.client.margin_lambda,
                      "margin_reduction": scenario.client.margin_reduction},
        )
    except ValueError as exc:
        what, _, fix = str(exc).partition("; ")
        raise ScenarioError("strategy", what, fix) from None


def prepare(scenario: Scenario) -> Prepared:
    """Load data (all partitions), build the initial model and the strategy; raises FedsimError on bad input."""
    logging.getLogger("flwr").setLevel(logging.ERROR)  # fedsim reports rounds itself
    data = federated_data(scenario.data, scenario.run.seed)
    data.partition(0)  # computes the partitioning (and its errors); other partitions load when sampled
    if scenario.client.loss == "fedld-margin" and data.info.task == "regression":
        raise ScenarioError("client.loss", "'fedld-margin' is a classification loss but the data is regression",
                            "use loss = 'ce' (mse is used for regression)")
    if scenario.bags is not None and scenario.privacy is not None and scenario.privacy.mode == "dp-sgd":
        raise ScenarioError("bags", "aggregate responses cannot be combined with DP-SGD in this version",
                            "use bags.epsilon for label privacy, or remove [bags]")
    check_requests(scenario, data)
    model = initial_model(scenario.model, data.info, scenario.run.seed)
    if scenario.privacy is not None and scenario.privacy.mode == "dp-sgd":
        model = private_model(model, scenario.privacy)
    strategy = make_strategy(scenario)
    if scenario.unlearning is not None:
        strategy = unlearning_strategy(scenario, data, model, strategy)
    return Prepared(scenario, data, model, strategy)


def unlearning_strategy(scenario: Scenario, data: FederatedData, model: nn.Module, strategy: Strategy) -> Unlearning:
    """Wrap `strategy` to serve the scenario's unlearning requests, evaluated against retrain."""
    u, c = scenario.unlearning, scenario.client
    evaluator = UnlearningEvaluator(data, model, scenario.run.seed, c.lr, c.batch_size) if u.evaluate else None
    return Unlearning(strategy, u.requests, settings=u, local=LocalTraining(**c.model_dump(exclude={"device"})),
                      seed=scenario.run.seed, timeout=scenario.run.round_timeout_s, evaluate=evaluator,
                      random_model=lambda seed: initial_model(scenario.model, data.info, seed).state_dict())


def train_config(scenario: Scenario) -> ConfigRecord:
    config = LocalTraining(**scenario.client.model_dump(exclude={"device"})).to_config()
    if scenario.strategy.name == "qfedavg":
        config[REPORT_TRAIN_LOSS] = True
    return config


def seed_sampling(strategy: Strategy, seed: int) -> None:
    """Make Flower's node sampling (module-level `random`) depend only on (seed, round, phase)."""
    for phase, name in enumerate(("configure_train", "configure_evaluate")):
        method = getattr(strategy, name)

        def seeded(server_round, arrays, config, grid, _method=method, _phase=phase):
            random.seed(derive_seed(seed, server_round, _phase))
            return _method(server_round, arrays, config, grid)

        setattr(strategy, name, seeded)


class Interrupted(Exception):
    """The run stopped on request (Ctrl-C, SIGTERM) after a complete round, whose checkpoint is on disk."""

    def __init__(self, server_round: int) -> None:
        super().__init__(f"interrupted after round {server_round}")
        self.server_round = server_round


stop_requested = threading.Event()  # set by the CLI's signal handler: finish the round, checkpoint, stop


class _FromRound(Strategy):
    """`strategy` with Flower's round numbers shifted by `offset`: start() counts from 1, a resumed run from
    the round after its checkpoint."""

    def __init__(self, strategy: Strategy, offset: int) -> None:
        self.strategy, self.offset = strategy, offset

    def configure_train(self, server_round, arrays, config, grid):
        return self.strategy.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        return self.strategy.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.strategy.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.strategy.aggregate_evaluate(server_round + self.offset, replies)

    def summary(self) -> None:
        self.strategy.summary()


def server_main(grid: Grid, prepared: Prepared, recorder: RunRecorder, resume: dict | None = None) -> ArrayRecord:
    """Run the strategy for `run.rounds` rounds on `grid` (or until the privacy budget is spent), evaluating
    centrally and checkpointing after every round; with `resume` (a checkpoint), from the round after it.
    Returns the final global arrays."""
    scenario, data, model = prepared.scenario, prepared.data, prepared.model
    x_test, y_test = data.test
    strategy = prepared.strategy
    done = resume["round"] if resume else 0
    initial = checkpoint.decode(resume["arrays"]) if resume else state_to_record(model.state_dict())
    latest: list[ArrayRecord] = [initial]
    resumable = hasattr(grid, "checkpoint_state")  # Flower's own runtime keeps client state out of reach
    monitor: PrivacyMonitor | None = None

    def save_checkpoint(server_round: int, arrays: ArrayRecord) -> None:
        checkpoint.write(recorder.run_dir, {
            "round": server_round, "arrays": checkpoint.encode(arrays), "initial": checkpoint.encode(recorder.initial),
            "scenario": scenario.to_toml(), "strategy": checkpoint.object_state(strategy),
            "monitor": checkpoint.object_state(monitor) if monitor else None, "grid": grid.checkpoint_state(),
            "rng": checkpoint.rng_state()})

    def central_evaluation(local_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        server_round = local_round + done
        latest[:] = [arrays]
        if local_round == 0 and done:
            return None  # a resumed run evaluated its starting model before the interruption
        model.load_state_dict(record_to_state(arrays))
        metrics = evaluate(model, x_test, y_test, data.info.task)
        recorder.record_round(server_round, metrics)
        if server_round > 0:
            every = scenario.run.checkpoint_every
            if resumable and (stop_requested.is_set() or (every and server_round % every == 0)):
                save_checkpoint(server_round, arrays)
            if isinstance(strategy, Unlearning):
                strategy.purge()  # after the checkpoint: a resumed run can serve a request again
            if stop_requested.is_set() and server_round < scenario.run.rounds:
                raise Interrupted(server_round)
        return MetricRecord(metrics)

    seed_sampling(strategy, scenario.run.seed)
    recorder.watch(strategy, unreliable=scenario.faults is not None)
    extras: dict[str, Callable[[], dict]] = {}
    if scenario.privacy is not None:
        noise = client_dp_noise(scenario) if scenario.privacy.mode == "client-dp" else None
        monitor = PrivacyMonitor(scenario.privacy, grid, noise)
        monitor.watch(strategy)
        extras["privacy"] = monitor.ledger
    if scenario.bags is not None and scenario.bags.epsilon is not None:
        label_dp = label_privacy(scenario)
        extras["label_privacy"] = lambda: label_dp
    if scenario.faults is not None and hasattr(grid, "take_fault_counts"):
        extras["faults"] = grid.take_fault_counts
    recorder.row_extras = lambda: {key: ledger() for key, ledger in extras.items()}
    if isinstance(strategy, Unlearning):
        strategy.store = HistoryStore(recorder.run_dir / "history", scenario.unlearning.history_interval)
        recorder.summary_extras = lambda: {"unlearning": strategy.results, "history": {
            "interval": strategy.store.interval, "rounds": len(strategy.store.rounds()),
            "bytes": strategy.store.size_bytes()}}
    if resume:
        checkpoint.restore_object(strategy, resume["strategy"])
        grid.restore_checkpoint(resume["grid"])
        if monitor is not None:
            checkpoint.restore_object(monitor, resume["monitor"])
        checkpoint.restore_rng(resume["rng"])
    try:
        _FromRound(strategy, done).start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=scenario.run.rounds - done,
            timeout=scenario.run.round_timeout_s or math.inf,
            train_config=train_config(scenario),
            evaluate_fn=central_evaluation,
        )
    except BudgetExhausted as exc:
        if not recorder.rows:
            raise FedsimError("privacy.target_epsilon", f"{exc}, so no round can run",
                              "raise privacy.noise_multiplier or privacy.target_epsilon") from None
        recorder.stopped = str(exc)
    return latest[0]
