"""`fedsim.run(scenario)`: prepare, start the runtime, run the server loop, write the run dir."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from fedsim import checkpoint
from fedsim.allocator import keep_freed_memory
from fedsim.clients.app import app as client_app
from fedsim.clients.train_together import train_together
from fedsim.clients.workspace import ClientSpec, workspace_of
from fedsim.errors import Diverged, FedsimError, NothingTrained, RunDirError, ScenarioError, StorageError
from fedsim.features.bags import divergence_cause
from fedsim.loop import RoundCallback
from fedsim.models import describe_model
from fedsim.models.factory import local_module
from fedsim.results import RunRecorder, RunResult, new_run_dir, read_model_record, rows_until
from fedsim.run_lock import refuse_if_live
from fedsim.runtime import InlineGrid, VirtualNodesGrid
from fedsim.scenario import Scenario
from fedsim.server import Interrupted, Prepared, check_resumed_model, prepare, server_main


def _warmed_up(grid: VirtualNodesGrid, scenario: Scenario) -> VirtualNodesGrid:
    """`grid`, its clients' one-off training costs paid first where a run times unlearning methods against each
    other (fedsim.training.warm_up)."""
    if scenario.unlearning is not None:
        grid.warm_up()
    return grid


def make_grid(prepared: Prepared) -> VirtualNodesGrid:
    """The Grid for `run.runtime`: inline, or Ray (local, or `run.ray_address` / $RAY_ADDRESS). Where `prepare`
    decided the scenario's clients train together (Prepared.vectorize), it hands each round's clients to the
    handler that trains them at once (fedsim.clients.train_together)."""
    keep_freed_memory()  # this process runs the rounds (and inline, the clients)
    scenario = prepared.scenario
    run_config = ClientSpec.of(scenario, prepared.given).run_config()
    n = scenario.data.partitioner.num_partitions
    vectorize = prepared.vectorize
    if scenario.run.runtime == "inline":
        if scenario.run.round_timeout_s is not None:
            raise ScenarioError("run.round_timeout_s", "an in-process client cannot be interrupted",
                                "use runtime = 'ray' for per-round timeouts, or remove round_timeout_s")
        workspace_of(run_config).read = prepared.read  # in one process, server and clients read each model once
        return _warmed_up(InlineGrid(client_app, n, run_config, faults=scenario.faults, seed=scenario.run.seed,
                                     cohort=train_together if vectorize else None,
                                     threads=max(1, int(scenario.run.resources.num_cpus))), scenario)
    if scenario.run.runtime == "ray":
        from fedsim.runtime.ray_grid import RayGrid

        address = scenario.run.ray_address or os.environ.get("RAY_ADDRESS") or None
        model = scenario.model
        own = local_module(model.factory, model.factory_path) if model.factory is not None else None
        return _warmed_up(RayGrid(n, run_config, scenario.run.resources, address=address, faults=scenario.faults,
                                  cohort="fedsim.clients.train_together:train_together" if vectorize else None,
                                  seed=scenario.run.seed, connect_timeout_s=scenario.run.ray_connect_timeout_s,
                                  user_modules=[own] if own is not None else []), scenario)
    raise ScenarioError("run.runtime", "'flower' runs through Flower's own CLI",
                        f"run from the project root: flwr run . --stream --federation-config \"num-supernodes={n}\" "
                        "--run-config 'scenario=\"<the scenario file>\"'")


def run_on_grid(prepared: Prepared, grid: Grid, out: str | Path | None = None,
                on_round: Callable[[dict], None] | None = None,
                describe: Callable[[], dict] | None = None, resume: dict | None = None,
                stop: threading.Event | None = None, callbacks: Sequence[RoundCallback] = (),
                started: float | None = None) -> RunResult:
    """The server loop on any Grid (fedsim's or Flower's), writing the run dir (continuing it from the
    checkpoint `resume`). A run stopped by Ctrl-C / SIGTERM, or that crashed after a checkpoint, keeps its run
    dir so `fedsim run --resume` can continue it; otherwise (bad input) nothing is kept.
    `describe()` says what ran the clients, asked at the end (e.g. how many Ray actors were replaced); a set
    `stop` event ends the run after the current round, with its checkpoint written (Interrupted)."""
    run_dir = prepared.run_dir or (Path(out) if resume is not None else new_run_dir(prepared.scenario, out))
    if prepared.run_dir is not None and out is not None and Path(out) != prepared.run_dir:
        raise ValueError(f"run_on_grid: out={out} but the run was prepared for {prepared.run_dir}")
    if prepared.unlearning is not None and prepared.run_dir is None:
        raise ValueError("a scenario with [unlearning] keeps its history store in the run dir: "
                         "prepare(scenario, run_dir=...) before run_on_grid")
    recorder = RunRecorder(run_dir, prepared.scenario, on_round, resume, started,
                           describe_model(prepared.model, prepared.given is not None))
    try:
        arrays = server_main(grid, prepared, recorder, resume, stop, callbacks)
    except Interrupted as exc:
        exc.run_dir = run_dir
        recorder.lock.release()
        raise
    except BaseException as exc:
        resumable = (run_dir / checkpoint.FILE).is_file() and \
            (isinstance(exc, StorageError) or not isinstance(exc, FedsimError))  # bad input: nothing is kept
        if resumable:
            exc.run_dir = run_dir  # for the CLI's "resume with" hint
        elif resume is None:
            recorder.discard()
        recorder.lock.release()
        raise
    runtime = describe() if describe else {}
    if prepared.one_by_one_because:
        runtime["one_by_one_because"] = prepared.one_by_one_because
    try:
        result = recorder.finish(in_model_dtypes(prepared.read(arrays), prepared.model), prepared.data.info.task,
                                 runtime)
    finally:
        recorder.lock.release()  # (finish removes it once the run dir is complete)
    if recorder.diverged is not None:
        server_round, metric, value = recorder.diverged
        cause = divergence_cause(prepared.scenario.bags, prepared.data.info.task)
        error = Diverged(f"round {server_round}", f"training diverged ({metric} is {value}); the run stopped, "
                         f"{run_dir} holds its rounds", (f"{cause}, or lower client.lr" if cause else "lower client.lr")
                         + " (or set run.stop_on_nan = false to run on)")
        error.result = result
        raise error
    if result.metrics and result.summary.get("skipped_rounds") == len(result.metrics):
        first_error = next((r["first_error"] for r in result.metrics if "first_error" in r), None)
        error = NothingTrained("fedsim run", f"no round aggregated anything: in each of the {len(result.metrics)} "
                               "rounds fewer clients answered than the strategy's min_train_nodes"
                               + (f" (first error: {first_error})" if first_error else "")
                               + f"; the final model in {run_dir} is the initial one",
                               "lower [faults] dropout_rate / failure_rate, or strategy.min_train_nodes")
        error.result = result
        raise error
    return result


def in_model_dtypes(state: dict, model: nn.Module) -> dict:
    """The final global state in the model's own dtypes: Flower's mean of an integer buffer (BatchNorm's
    num_batches_tracked) is a float; the model (and model.pt) keeps it an integer, truncated, as load_state_dict
    does for every client."""
    own = model.state_dict()
    return {k: v.to(own[k].dtype) if k in own and v.dtype != own[k].dtype else v for k, v in state.items()}


def resumable(run_dir: str | Path) -> tuple[Scenario, dict]:
    """The scenario and checkpoint of an interrupted run dir; RunDirError if it cannot be resumed."""
    run_dir = Path(run_dir)
    refuse_if_live(run_dir)
    if (run_dir / "summary.json").is_file():
        raise RunDirError(str(run_dir), "is a finished run, there is nothing to resume",
                          "look at it with `fedsim show`")
    if not (run_dir / "scenario.toml").is_file():
        raise RunDirError(str(run_dir), "is not a fedsim run dir (no scenario.toml)", "pass the dir `fedsim run` made")
    state = checkpoint.read(run_dir)
    scenario = Scenario.from_run_dir(run_dir / "scenario.toml")
    if (run_dir / "scenario.toml").read_text(encoding="utf-8") != state["scenario"]:
        raise RunDirError(str(run_dir / "scenario.toml"), "differs from the scenario the checkpoint was written with",
                          "restore the file, or start a new run")
    rows_until(run_dir, state["round"])  # the rows a resume continues
    return scenario, state


def resume(run_dir: str | Path, on_round: Callable[[dict], None] | None = None,
           runtime: str | None = None, stop: threading.Event | None = None,
           model: nn.Module | Callable[[], nn.Module] | None = None) -> RunResult:
    """Continue an interrupted run from its last checkpoint; the finished run equals an uninterrupted one
    (timings aside). `runtime` may differ from the original (inline and Ray give identical results). A run
    started with fedsim.run(model=...) is resumed with the same `model`."""
    return run_from_checkpoint(run_dir, *resumable(run_dir), on_round, runtime, stop, model)


def run_from_checkpoint(run_dir: str | Path, scenario: Scenario, state: dict,
                        on_round: Callable[[dict], None] | None = None, runtime: str | None = None,
                        stop: threading.Event | None = None,
                        model: nn.Module | Callable[[], nn.Module] | None = None) -> RunResult:
    """`resume` once `resumable` has checked the run dir and read its checkpoint."""
    started = time.perf_counter()
    if runtime is not None:
        scenario = scenario.with_overrides({"run.runtime": runtime})
    given_before = read_model_record(run_dir).get("given", False)
    if given_before and model is None:
        raise RunDirError(str(run_dir), "was started with a model given to fedsim.run(model=...)",
                          "resume it in Python: fedsim.resume(run_dir, model=<the same model>)")
    prepared = prepare(scenario, run_dir=run_dir, model=model)
    check_resumed_model(prepared, checkpoint.decode(state["arrays"]))
    grid = make_grid(prepared)
    try:
        return run_on_grid(prepared, grid, run_dir, on_round, grid.describe, resume=state, stop=stop, started=started)
    finally:
        grid.close()


def run(scenario: Scenario, out: str | Path | None = None, on_round: Callable[[dict], None] | None = None, *,
        strategy: Strategy | None = None, callbacks: Sequence[RoundCallback] = (),
        stop: threading.Event | None = None, model: nn.Module | Callable[[], nn.Module] | None = None) -> RunResult:
    """Run `scenario` to the end; returns what the run dir holds. Nothing is written if the input is bad.

    `strategy`: any Flower strategy to run instead of the scenario's [strategy]; it gets every feature the
    scenario asks for (seeded sampling, checkpoints, privacy ledger, faults, unlearning). `callbacks`: your own
    fedsim.loop.RoundCallbacks (docs/extending.md). `on_round(row)` is called after every round; a set `stop`
    event ends the run after the current round (Interrupted). `model`: your own nn.Module (a copy of it, weights
    included, is the initial global model) or a zero-argument callable returning one, instead of [model]."""
    started = time.perf_counter()  # the wall time counts data loading and the runtime's start-up too
    prepared = prepare(scenario, strategy, new_run_dir(scenario, out), model)
    grid = make_grid(prepared)
    try:
        return run_on_grid(prepared, grid, None, on_round, grid.describe, stop=stop, callbacks=callbacks,
                           started=started)
    finally:
        grid.close()
