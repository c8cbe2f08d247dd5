"""The server side of a run: the strategy from the scenario, the run's round callbacks, central evaluation.

`prepare` builds (and so validates) everything before anything is written; `server_main` is what a Flower
ServerApp's main does: it hands the strategy, the Grid and the callbacks to the round pipeline (fedsim.loop).
fedsim's runtimes only supply the Grid.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from fedsim import checkpoint, features, protocol
from fedsim.arrays import StateReader, state_to_record
from fedsim.callbacks import Checkpointer, FaultCounts, SeededSampling, StopOnDivergence, UnlearningRecords
from fedsim.data import FederatedData, federated_data
from fedsim.devices import select_device
from fedsim.errors import FedsimError, ScenarioError
from fedsim.evaluation import evaluate
from fedsim.features import Feature
from fedsim.loop import INTERRUPTED, RoundCallback, clients_needed, run_rounds
from fedsim.models import GivenModel, check_model, fresh_model, initial_model, mismatch
from fedsim.quiet import quiet
from fedsim.results import RunRecorder
from fedsim.scenario import Scenario
from fedsim.stacked import pays_off, unsupported_model
from fedsim.strategies.early import EARLY
from fedsim.strategies.registry import build_strategy
from fedsim.strategies.unlearning import Unlearning
from fedsim.trackers import check_installed, trackers
from fedsim.unlearning.forget import check_requests, partition_sizes
from fedsim.unlearning.history import HistoryStore
from fedsim.unlearning.metrics import UnlearningEvaluator


@dataclass
class Prepared:
    """Everything a run needs, built (and so validated) before anything is written."""

    scenario: Scenario
    data: FederatedData
    model: nn.Module
    strategy: Strategy  # what the server loop runs (the Unlearning wrapper when there is one)
    features: list[Feature]  # the features the scenario switches on (fedsim.features)
    vectorize: bool  # whether a round's clients are trained together (decided here, once)
    one_by_one_because: str | None  # run.vectorize = "auto": why this scenario cannot be vectorised, if it cannot
    unlearning: Unlearning | None = None
    given: GivenModel | None = None  # the model given to fedsim.run(model=...), if one was
    run_dir: Path | None = None  # where the run will write (None: only validated; a run picks its dir then)
    # the server's reads of the global model (central evaluation, the final result), shared with in-process clients
    read: StateReader = field(default_factory=StateReader)


def make_strategy(scenario: Scenario) -> Strategy:
    """The scenario's [strategy], with fedsim's defaults for how many clients a round needs."""
    s = scenario.strategy
    try:
        return build_strategy(
            s.name, s.params, fraction_train=s.fraction_train, fraction_evaluate=s.fraction_evaluate,
            **s.node_minimums(scenario.data.partitioner.num_partitions),
            defaults={"proximal_mu": scenario.client.proximal_mu, "client_learning_rate": scenario.client.lr,
                      "margin_lambda": scenario.client.margin_lambda,
                      "margin_reduction": scenario.client.margin_reduction},
        )
    except ValueError as exc:
        what, _, fix = str(exc).partition("; ")
        raise ScenarioError("strategy", what, fix) from None


def prepare(scenario: Scenario, strategy: Strategy | None = None, run_dir: str | Path | None = None,
            model: nn.Module | Callable[[], nn.Module] | None = None) -> Prepared:
    """Load data (all partitions), build the initial model and the strategy (the scenario's, or `strategy`: any
    Flower strategy, which then gets every fedsim feature the scenario asks for); FedsimError on bad input.
    `run_dir`: where the run will write (nothing is written here); the unlearning history store lives in it, so a
    scenario with [unlearning] needs it to run. `model`: an nn.Module (a copy is the initial global model) or a
    zero-argument callable, instead of the scenario's [model] (fedsim.models.GivenModel)."""
    data = federated_data(scenario.data, scenario.run.seed)
    data.partition(0)  # computes the partitioning (and its errors); other partitions load when sampled
    if scenario.client.loss == "fedld-margin" and data.info.task == "regression":
        raise ScenarioError("client.loss", "'fedld-margin' is a classification loss but the data is regression",
                            "use loss = 'ce' (mse is used for regression)")
    enabled = features.enabled(scenario)
    check_requests(scenario, data)
    given = GivenModel.of(model) if model is not None else None
    model = initial_model(scenario.model, data.info, scenario.run.seed, given)
    check_model(model, data.info, data.test[0][:2], model_key(scenario, given))
    for feature in enabled:
        model = feature.check(scenario, data, model)
    because = not_vectorizable(scenario, enabled, model) if scenario.run.vectorize is not False else None
    vectorize = decide_vectorize(scenario, because, model, data)
    check_installed(scenario.output.trackers)
    for feature in enabled:
        strategy = feature.strategy(scenario, strategy)
    if strategy is None:
        with quiet("flwr"):  # e.g. "fraction_evaluate is set to 0.0": fedsim's own settings, not news to the user
            strategy = make_strategy(scenario)
    run_dir = Path(run_dir) if run_dir is not None else None
    unlearning = unlearning_strategy(scenario, data, model, strategy, run_dir, given) \
        if scenario.unlearning is not None else None
    return Prepared(scenario, data, model, unlearning or strategy, enabled, vectorize,
                    because if scenario.run.vectorize == "auto" else None, unlearning, given, run_dir)


def model_key(scenario: Scenario, given: GivenModel | None) -> str:
    """The setting that chose the run's model, for its errors."""
    if given is not None:
        return "model"
    return "model.factory" if scenario.model.factory is not None else "model.name"


def check_resumed_model(prepared: Prepared, arrays: dict) -> None:
    """The model built for a resumed run must be the architecture its checkpoint holds."""
    problems = mismatch(prepared.model.state_dict(), arrays)
    if problems:
        key = model_key(prepared.scenario, prepared.given)
        raise ScenarioError(key, f"builds another architecture than the run's checkpoint ({problems})",
                            "restore the model code the run started with, or start a new run")


def not_vectorizable(scenario: Scenario, enabled: list[Feature], model: nn.Module) -> str | None:
    """Why this scenario's training rounds cannot be vectorised (None when they can)."""
    if scenario.run.runtime == "flower":
        return "Flower's own runtime executes clients one at a time"
    if scenario.strategy.name == "fedbn":
        return "FedBN's clients each start from their own normalisation layers"
    return next((r for r in (f.not_vectorizable(scenario) for f in enabled) if r), None) or unsupported_model(model)


def decide_vectorize(scenario: Scenario, reason: str | None, model: nn.Module, data: FederatedData) -> bool:
    """Whether a round's clients are trained together: `true` (an error where it cannot be, `reason`: from
    not_vectorizable), `false`, or `auto`: where it applies and pays off (fedsim.stacked.pays_off, on the device the
    clients will train on)."""
    choice = scenario.run.vectorize
    if choice is True and reason:
        raise ScenarioError("run.vectorize", f"true, but {reason}", "set vectorize = 'auto' (or false)")
    if choice is not True and (choice is False or reason):
        return False
    sample = data.test[0]
    return choice is True or len(sample) == 0 or \
        pays_off(model, sample, scenario.client.batch_size, client_device_type(scenario))


def client_device_type(scenario: Scenario) -> str:
    """'cuda' or 'cpu': where the clients train (Ray actors see a GPU only with run.resources.num_gpus > 0)."""
    if scenario.run.runtime == "ray":
        return "cuda" if scenario.run.resources.num_gpus > 0 and scenario.client.device != "cpu" else "cpu"
    return select_device(scenario.client.device).type


def unlearning_strategy(scenario: Scenario, data: FederatedData, model: nn.Module, strategy: Strategy,
                        run_dir: Path | None, given: GivenModel | None = None) -> Unlearning:
    """Wrap `strategy` to serve the scenario's unlearning requests, evaluated against retrain, with its history
    store in RUN_DIR/history."""
    u, c = scenario.unlearning, scenario.client
    evaluator = UnlearningEvaluator(data, model, scenario.run.seed, c.lr, c.batch_size) if u.evaluate else None
    store = HistoryStore(run_dir / "history", u.history_interval) if run_dir is not None else None
    return Unlearning(strategy, u.requests, settings=u, local=c.local(), seed=scenario.run.seed,
                      timeout=scenario.run.round_timeout_s, store=store, evaluate=evaluator,
                      random_model=lambda seed: fresh_model(scenario.model, data.info, seed, given).state_dict(),
                      sizes=partition_sizes(data))


def train_config(prepared: Prepared) -> ConfigRecord:
    """Everything a client needs to train in a round: LocalTraining and what the enabled features send."""
    scenario = prepared.scenario
    config = scenario.client.local().to_config()
    if scenario.strategy.name == "qfedavg":
        config[protocol.REPORT_TRAIN_LOSS] = True
    for feature in prepared.features:
        config.update(feature.train_config(scenario))
    return config


@contextlib.contextmanager
def _checkpoints_on_disk(checkpointer: Checkpointer) -> Iterator[None]:
    """However the rounds end, the last checkpoint is on disk after them (a failed round keeps its own error)."""
    try:
        yield
    except BaseException:
        checkpointer.close(raise_error=False)
        raise
    checkpointer.close()


@contextlib.contextmanager
def _setup_frozen() -> Iterator[None]:
    """While the rounds run, the garbage collector leaves the objects that exist before them (data, every virtual
    node's context, models, imported modules) out of its full collections: one walked them all for ~230 ms with
    bench-w2's 10,000 contexts and found nothing to free. gc.freeze's objects are freed as usual by reference
    counting; after the rounds they return to the collector's care (gc.unfreeze)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class Interrupted(Exception):
    """The run stopped on request (Ctrl-C, SIGTERM) after a complete round, whose checkpoint is on disk."""

    def __init__(self, server_round: int) -> None:
        super().__init__(f"interrupted after round {server_round}")
        self.server_round = server_round


def round_callbacks(grid: Grid, prepared: Prepared, recorder: RunRecorder, extra: Sequence[RoundCallback] = (),
                    scenario_text: str | None = None) -> tuple[list[RoundCallback], Checkpointer]:
    """The run's callbacks, in the order they see each hook: seeded sampling, the features' callbacks (their row
    fields in this order), fault counts, the user's `extra` callbacks, the recorder, the divergence stop, the
    checkpoint, then the unlearning store purge. `scenario_text`: the run dir's scenario.toml as checkpoints
    record it."""
    scenario, strategy = prepared.scenario, prepared.strategy
    callbacks: list[RoundCallback] = [SeededSampling(scenario.run.seed)]
    stateful = {"strategy": strategy}
    for feature in prepared.features:
        for i, callback in enumerate(feature.callbacks(scenario, grid, clients_needed(strategy))):
            callbacks.append(callback)
            stateful[f"{feature.name}.{i}"] = callback
    if scenario.faults is not None and hasattr(grid, "take_fault_counts"):
        callbacks.append(FaultCounts(grid))
    callbacks += [*extra, recorder]
    if scenario.run.stop_on_nan:
        callbacks.append(StopOnDivergence())
    checkpointer = Checkpointer(recorder.run_dir, scenario.run.checkpoint_every, scenario_text or scenario.to_toml(),
                                grid, stateful, lambda: recorder.initial, prepared.read)
    if hasattr(grid, "checkpoint_state"):  # Flower's own runtime keeps client state out of reach
        callbacks.append(checkpointer)
    if prepared.unlearning is not None:
        callbacks.append(UnlearningRecords(prepared.unlearning, checkpointer.wait))
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
        model.load_state_dict(prepared.read(arrays))
        return evaluate(model, x_test, y_test, data.info.task)

    callbacks, checkpointer = round_callbacks(grid, prepared, recorder, extra, resume["scenario"] if resume else None)
    if resume:
        checkpointer.restore(resume)
    with quiet("flwr"), _checkpoints_on_disk(checkpointer), _setup_frozen():  # fedsim reports rounds itself
        outcome = run_rounds(prepared.strategy, grid, initial, first_round=done + 1,
                             last_round=scenario.run.rounds, train_config=train_config(prepared),
                             evaluate_fn=central_evaluation, callbacks=callbacks,
                             timeout=scenario.run.round_timeout_s, tolerate_failures=scenario.faults is not None,
                             stop=stop, early=EARLY if prepared.vectorize and scenario.run.reduce_early else None)
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
