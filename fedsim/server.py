"""The server side of a run: the strategy from the scenario, the run's round callbacks, central evaluation.

`prepare` builds (and so validates) everything before anything is written; `server_main` is what a Flower
ServerApp's main does: it hands the strategy, the Grid and the callbacks to the round pipeline (fedsim.loop).
fedsim's runtimes only supply the Grid.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from fedsim import checkpoint, protocol
from fedsim.arrays import record_to_state, state_to_record
from fedsim.budget import PrivacyMonitor
from fedsim.callbacks import (
    Checkpointer,
    ConstantLedger,
    FaultCounts,
    SeededSampling,
    StopOnDivergence,
    UnlearningRecords,
)
from fedsim.clients.dp_sgd import check_local_training, private_model, round_plan
from fedsim.clients.workspace import select_device
from fedsim.data import FederatedData, federated_data
from fedsim.errors import FedsimError, ScenarioError
from fedsim.evaluation import evaluate
from fedsim.loop import INTERRUPTED, RoundCallback, run_rounds
from fedsim.models import initial_model
from fedsim.privacy import noise_multiplier
from fedsim.protocol import BagSettings, DPSGDSettings, LocalTraining
from fedsim.quiet import quiet
from fedsim.results import RunRecorder
from fedsim.scenario import Scenario
from fedsim.stacked import pays_off, unsupported_model
from fedsim.strategies.dp_fedavg import PoissonDPFedAvg
from fedsim.strategies.registry import build_strategy
from fedsim.strategies.unlearning import Unlearning
from fedsim.trackers import check_installed, trackers
from fedsim.unlearning.forget import check_requests
from fedsim.unlearning.metrics import UnlearningEvaluator


@dataclass
class Prepared:
    """Everything a run needs, built (and so validated) before anything is written."""

    scenario: Scenario
    data: FederatedData
    model: nn.Module
    strategy: Strategy  # what the server loop runs (the Unlearning wrapper when there is one)
    unlearning: Unlearning | None = None


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


def prepare(scenario: Scenario, strategy: Strategy | None = None) -> Prepared:
    """Load data (all partitions), build the initial model and the strategy (the scenario's, or `strategy`: any
    Flower strategy, which then gets every fedsim feature the scenario asks for); FedsimError on bad input."""
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
        mu = scenario.strategy.params.get("proximal_mu", scenario.client.proximal_mu) \
            if scenario.strategy.name == "fedprox" else scenario.client.proximal_mu
        check_local_training(LocalTraining(**scenario.client.model_dump(exclude={"device", "proximal_mu"}),
                                           proximal_mu=mu))
        model = private_model(model, scenario.privacy.fix_model)
    check_client_sizes(scenario, data)
    check_vectorizable(scenario, model)
    check_installed(scenario.output.trackers)
    if strategy is None:
        with quiet("flwr"):  # e.g. "fraction_evaluate is set to 0.0": fedsim's own settings, not news to the user
            strategy = make_strategy(scenario)
    unlearning = unlearning_strategy(scenario, data, model, strategy) if scenario.unlearning is not None else None
    return Prepared(scenario, data, model, unlearning or strategy, unlearning)


def not_vectorizable(scenario: Scenario, model: nn.Module) -> str | None:
    """Why this scenario's training rounds cannot be vectorised (None when they can)."""
    if scenario.run.runtime == "flower":
        return "Flower's own runtime executes clients one at a time"
    if scenario.bags is not None:
        return "training on bags' aggregate responses runs one client at a time"
    return unsupported_model(model)


def vectorizes(prepared: Prepared) -> bool:
    """Whether a round's clients are trained together: `true` (checked by check_vectorizable), or `auto` where it
    applies and pays off (fedsim.stacked.pays_off, on the device the clients will train on)."""
    scenario, model = prepared.scenario, prepared.model
    if scenario.run.vectorize is True:
        return True  # what cannot be vectorised was refused by check_vectorizable
    if scenario.run.vectorize is False or not_vectorizable(scenario, model) is not None:
        return False
    sample = prepared.data.test[0]
    return len(sample) == 0 or pays_off(model, sample, scenario.client.batch_size, client_device_type(scenario))


def client_device_type(scenario: Scenario) -> str:
    """'cuda' or 'cpu': where the clients train (Ray actors see a GPU only with run.resources.num_gpus > 0)."""
    if scenario.run.runtime == "ray":
        return "cuda" if scenario.run.resources.num_gpus > 0 and scenario.client.device != "cpu" else "cpu"
    return select_device(scenario.client.device).type


def check_vectorizable(scenario: Scenario, model: nn.Module) -> None:
    """`run.vectorize = true` on a scenario that cannot be vectorised is an error (auto falls back quietly)."""
    reason = not_vectorizable(scenario, model) if scenario.run.vectorize is True else None
    if reason:
        raise ScenarioError("run.vectorize", f"true, but {reason}", "set vectorize = 'auto' (or false)")


def planned_rounds(scenario: Scenario) -> int:
    """The rounds a DP-SGD client plans its budget for (its expected share of the run's rounds)."""
    return math.ceil(scenario.run.rounds * scenario.strategy.fraction_train)


def check_client_sizes(scenario: Scenario, data: FederatedData) -> None:
    """What depends on each client's size, checked before training (this loads every partition, so only when
    needed): a bag size some client cannot fill, a DP-SGD target epsilon no noise reaches for some client."""
    p, b = scenario.privacy, scenario.bags
    dp_target = p is not None and p.mode == "dp-sgd" and p.noise_multiplier is None
    if b is None and not dp_target:
        return
    sizes = data.label_counts().sum(axis=1)
    smallest = int(sizes.argmin())
    if b is not None and sizes[smallest] < b.k:
        raise ScenarioError("bags.k", f"bags of {b.k} but client {smallest} holds {int(sizes[smallest])} examples",
                            f"use bags.k <= {int(sizes[smallest])}, or fewer / larger partitions")
    if dp_target:
        local = LocalTraining(**scenario.client.model_dump(exclude={"device"}))
        for n in sorted({int(n) for n in sizes}):
            q, steps = round_plan(n, local)
            try:  # cached: the clients of this size reuse the search in this process
                noise_multiplier(p.target_epsilon, q, steps * max(1, planned_rounds(scenario)), p.delta, p.accountant)
            except FedsimError as exc:
                raise ScenarioError("privacy.target_epsilon", f"{p.target_epsilon} cannot be met by a client of {n} "
                                    f"examples ({steps} steps a round for {planned_rounds(scenario)} rounds at "
                                    f"q = {q:.3g}): {exc.what}", exc.fix) from None


def unlearning_strategy(scenario: Scenario, data: FederatedData, model: nn.Module, strategy: Strategy) -> Unlearning:
    """Wrap `strategy` to serve the scenario's unlearning requests, evaluated against retrain."""
    u, c = scenario.unlearning, scenario.client
    evaluator = UnlearningEvaluator(data, model, scenario.run.seed, c.lr, c.batch_size) if u.evaluate else None
    return Unlearning(strategy, u.requests, settings=u, local=LocalTraining(**c.model_dump(exclude={"device"})),
                      seed=scenario.run.seed, timeout=scenario.run.round_timeout_s, evaluate=evaluator,
                      random_model=lambda seed: initial_model(scenario.model, data.info, seed).state_dict())


def train_config(scenario: Scenario) -> ConfigRecord:
    """Everything a client needs to train in a round: LocalTraining, and DP-SGD's or the bags' settings."""
    config = LocalTraining(**scenario.client.model_dump(exclude={"device"})).to_config()
    if scenario.strategy.name == "qfedavg":
        config[protocol.REPORT_TRAIN_LOSS] = True
    p = scenario.privacy
    if p is not None and not p.report_uncovered:
        config[protocol.REPORT_TRAIN_METRICS] = False
    if p is not None and p.mode == "dp-sgd":
        config.update(DPSGDSettings(delta=p.delta, accountant=p.accountant, max_grad_norm=p.max_grad_norm,
                                    planned_rounds=planned_rounds(scenario), noise_multiplier=p.noise_multiplier,
                                    target_epsilon=p.target_epsilon).to_config())
    b = scenario.bags
    if b is not None:
        config.update(BagSettings(k=b.k, rho=b.rho, clip=b.clip, epsilon=b.epsilon).to_config())
    return config


class Interrupted(Exception):
    """The run stopped on request (Ctrl-C, SIGTERM) after a complete round, whose checkpoint is on disk."""

    def __init__(self, server_round: int) -> None:
        super().__init__(f"interrupted after round {server_round}")
        self.server_round = server_round


def uncovered(scenario: Scenario) -> list[str]:
    """What a private run releases that its epsilon does not cover (privacy.report_uncovered = true)."""
    p = scenario.privacy
    if p is None or not p.report_uncovered:
        return []
    return ["clients' training loss and accuracy"] + (
        ["federated evaluation on clients' data"] if scenario.strategy.fraction_evaluate > 0 else [])


def _needed(strategy: Strategy) -> int:
    """The fewest clients a round of `strategy` can run with."""
    return max(1, getattr(strategy, "min_available_nodes", 1), getattr(strategy, "min_train_nodes", 1))


def round_callbacks(grid: Grid, prepared: Prepared, recorder: RunRecorder, extra: Sequence[RoundCallback] = (),
                    scenario_text: str | None = None) -> tuple[list[RoundCallback], Checkpointer]:
    """The run's callbacks, in the order they see each hook: seeded sampling, the privacy monitor and the
    ledgers (their row fields in this order), the user's `extra` callbacks, the recorder, the checkpoint, then
    the unlearning store purge. `scenario_text`: the run dir's scenario.toml as checkpoints record it."""
    scenario, strategy = prepared.scenario, prepared.strategy
    callbacks: list[RoundCallback] = [SeededSampling(scenario.run.seed)]
    monitor = None
    if scenario.privacy is not None:
        noise = client_dp_noise(scenario) if scenario.privacy.mode == "client-dp" else None
        monitor = PrivacyMonitor(scenario.privacy, grid, noise, _needed(strategy), uncovered(scenario))
        callbacks.append(monitor)
    if scenario.bags is not None and scenario.bags.epsilon is not None:
        callbacks.append(ConstantLedger("label_privacy", label_privacy(scenario)))
    if scenario.faults is not None and hasattr(grid, "take_fault_counts"):
        callbacks.append(FaultCounts(grid))
    callbacks += [*extra, recorder]
    if scenario.run.stop_on_nan:
        callbacks.append(StopOnDivergence())
    checkpointer = Checkpointer(recorder.run_dir, scenario.run.checkpoint_every, scenario_text or scenario.to_toml(),
                                grid, {"strategy": strategy, "monitor": monitor}, lambda: recorder.initial)
    if hasattr(grid, "checkpoint_state"):  # Flower's own runtime keeps client state out of reach
        callbacks.append(checkpointer)
    if prepared.unlearning is not None:
        callbacks.append(UnlearningRecords(prepared.unlearning, recorder.run_dir, scenario.unlearning.history_interval))
    callbacks += trackers(scenario, recorder)
    return callbacks, checkpointer


def server_main(grid: Grid, prepared: Prepared, recorder: RunRecorder, resume: dict | None = None,
                stop: threading.Event | None = None, extra: Sequence[RoundCallback] = ()) -> ArrayRecord:
    """Run the strategy for `run.rounds` rounds on `grid` (or until the privacy budget is spent), evaluating
    centrally and checkpointing after every round; with `resume` (a checkpoint), from the round after it.
    A set `stop` event ends the run after the current round (Interrupted); `extra` are the user's own round
    callbacks. Returns the final global arrays."""
    scenario, data, model = prepared.scenario, prepared.data, prepared.model
    x_test, y_test = data.test
    done = resume["round"] if resume else 0
    initial = checkpoint.decode(resume["arrays"]) if resume else state_to_record(model.state_dict())

    def central_evaluation(arrays: ArrayRecord) -> dict[str, float]:
        model.load_state_dict(record_to_state(arrays))
        return evaluate(model, x_test, y_test, data.info.task)

    callbacks, checkpointer = round_callbacks(grid, prepared, recorder, extra, resume["scenario"] if resume else None)
    if resume:
        checkpointer.restore(resume)
    with quiet("flwr"):  # fedsim reports rounds itself
        outcome = run_rounds(prepared.strategy, grid, initial, first_round=done + 1,
                             last_round=scenario.run.rounds, train_config=train_config(scenario),
                             evaluate_fn=central_evaluation, callbacks=callbacks,
                             timeout=scenario.run.round_timeout_s, tolerate_failures=scenario.faults is not None,
                             stop=stop)
    if outcome.stopped == INTERRUPTED:
        raise Interrupted(outcome.last_round)
    if outcome.stopped is not None:
        if not recorder.rows:
            raise FedsimError("privacy.target_epsilon", f"{outcome.stopped}, so no round can run",
                              "raise privacy.noise_multiplier or privacy.target_epsilon")
        recorder.stopped = outcome.stopped
    recorder.diverged = next((cb.found for cb in callbacks if isinstance(cb, StopOnDivergence)), None)
    for cb in callbacks:
        recorder.summary_extras.update(cb.on_run_end())
    return outcome.arrays
