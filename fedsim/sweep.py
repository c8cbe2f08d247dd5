"""Sweeps: a base scenario run over a grid of overrides and several seeds, one run dir per combination.

A sweep file (TOML):
    base = "fedld-noniid"                     # shipped scenario name, or a path (next to this file first)
    seeds = [0, 1, 2]
    [grid]                                    # every combination of these values
    "data.partitioner.alpha" = [0.1, 0.3, 1.0]
    strategy = [{name = "fedld"}, {name = "fedavg"}, {name = "fedprox", proximal_mu = 0.01}]
    [set]                                     # fixed overrides for every run
    "run.rounds" = 30
A table value sets several keys under its grid key. Each run is named <base name>-<label>, so
`fedsim compare` groups its seeds.
"""

from __future__ import annotations

import itertools
import shutil
import threading
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedsim.errors import FedsimError, RunDirError, ScenarioError, suggest
from fedsim.scenario import Scenario

if TYPE_CHECKING:
    from fedsim.results import RunResult


class SweepFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: str
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    set: dict[str, Any] = Field(default_factory=dict)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        twice = sorted({s for s in seeds if seeds.count(s) > 1})
        if twice:
            raise ValueError(f"seed {twice[0]} is listed {seeds.count(twice[0])} times (one run dir per seed); "
                             "list each seed once")
        return seeds


def first_difference(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> tuple[str, Any, Any] | None:
    """(dotted key, value in a, value in b) of the first setting two scenarios' dicts disagree on, or None."""
    for key in sorted(set(a) | set(b)):
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            found = first_difference(left, right, f"{prefix}{key}.")
            if found is not None:
                return found
        elif left != right:
            return f"{prefix}{key}", left, right
    return None


def check_resumable(runs: list[SweepRun]) -> None:
    """Refuse to resume a sweep into run dirs that hold other runs than this sweep's (another base, grid, --set):
    a RunDirError naming the first run dir and the first setting that differs."""
    for item in runs:
        stored = item.run_dir / "scenario.toml"
        if not stored.is_file():
            continue
        found = first_difference(Scenario.from_run_dir(stored).to_dict(), item.scenario.to_dict())
        if found is not None:
            key, was, now = found
            raise RunDirError(str(item.run_dir), f"was run with {key} = {was!r}, this sweep sets {now!r}",
                              "resume with the sweep's own file and --set options (the stopped sweep printed them), "
                              "or pass another --out")


def shipped_sweeps() -> dict[str, Path]:
    folder = resources.files("fedsim.scenarios").joinpath("sweeps")
    return {p.name[:-5]: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def load_sweep(name_or_path: str) -> tuple[SweepFile, Path]:
    path = Path(name_or_path)
    if not path.is_file():
        if name_or_path not in shipped_sweeps():
            raise ScenarioError(name_or_path, "no such sweep file or shipped sweep", suggest(name_or_path,
                                                                                             shipped_sweeps()))
        path = shipped_sweeps()[name_or_path]
    try:
        sweep = SweepFile.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(str(path), f"TOML syntax error: {exc}", "fix the TOML at that line") from None
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ScenarioError(f"{path}: {loc}", err["msg"],
                            "see `fedsim sweep --help` for the sweep file format") from None
    beside = path.parent / sweep.base  # a base file is found next to the sweep file first
    if not Path(sweep.base).is_absolute() and beside.is_file():
        sweep = sweep.model_copy(update={"base": str(beside)})
    return sweep, path


def _label(key: str, value: Any) -> str:
    if isinstance(value, dict):
        return "-".join(str(v) for v in value.values())
    field = key.rsplit(".", 1)[-1]
    return str(value) if field == "name" else f"{field}{value}"


def _overrides(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return {f"{key}.{k}": v for k, v in value.items()}
    return {key: value}


def expand(sweep: SweepFile) -> Iterator[tuple[str, int, Scenario]]:
    """(label, seed, scenario) for every grid combination and seed; all validated before anything runs."""
    base = Scenario.load(sweep.base, dict(sweep.set))
    keys = list(sweep.grid)
    for values in itertools.product(*(sweep.grid[k] for k in keys)):
        overrides: dict[str, Any] = {}
        for key, value in zip(keys, values):
            overrides.update(_overrides(key, value))
        label = "-".join(_label(k, v) for k, v in zip(keys, values)) or "base"
        overrides["run.name"] = f"{base.run.name}-{label}"
        for seed in sweep.seeds:
            yield label, seed, base.with_overrides({**overrides, "run.seed": seed})


@dataclass
class SweepRun:
    """One run of a sweep and how it went: "pending", "done", "skipped" (finished before, --resume), "failed"
    (its error kept, the sweep goes on) or "stopped" (Ctrl-C: checkpointed, --resume continues it)."""

    label: str
    seed: int
    scenario: Scenario
    run_dir: Path
    status: str = "pending"
    result: RunResult | None = None
    error: str | None = None


def plan(sweep: SweepFile, out: Path) -> list[SweepRun]:
    """Every run of the sweep, in order, with its run dir out/<label>-seed<k> (all validated)."""
    return [SweepRun(label, seed, scenario, out / f"{label}-seed{seed}") for label, seed, scenario in expand(sweep)]


def run_sweep(sweep: SweepFile, out: Path, *, resume: bool = False, stop: threading.Event | None = None,
              parallel: int = 1, ray_address: str | None = None,
              on_start: Callable[[SweepRun, int, int], None] | None = None,
              on_end: Callable[[SweepRun, int, int], None] | None = None) -> list[SweepRun]:
    """Run the sweep's runs into `out`: one by one, `parallel` at a time (each in its own process), or spread
    over the Ray cluster at `ray_address` (each run a Ray task); results are identical every way, since every
    run is seeded by its scenario. A run that fails is recorded and the sweep goes on. A set `stop` ends the
    sweep: one by one, the current run stops after its round (checkpointed); in parallel, no new run starts and
    those in progress finish; on Ray, the runs not finished are cancelled. Without `resume` a run dir left by an
    earlier sweep is an error; with it, finished runs are skipped and interrupted ones continued (on Ray: rerun)."""
    runs = plan(sweep, out)
    if resume:
        check_resumable(runs)
    if not resume:
        taken = next((r.run_dir for r in runs if r.run_dir.exists() and any(r.run_dir.iterdir())), None)
        if taken is not None:
            raise RunDirError(str(taken), "already holds a run of this sweep",
                              "add --resume to skip finished runs and continue interrupted ones, or pass another --out")
    if ray_address is not None:
        return _run_on_ray(runs, resume, stop, ray_address, on_start, on_end)
    if parallel > 1:
        return _run_parallel(runs, resume, stop, parallel, on_start, on_end)
    for index, item in enumerate(runs):
        if stop is not None and stop.is_set():
            break
        if on_start:
            on_start(item, index, len(runs))
        item.status, item.error = execute(item.scenario, item.run_dir, resume, stop)
        _load_result(item)
        if on_end:
            on_end(item, index, len(runs))
        if item.status == "stopped":
            break
    return runs


def execute(scenario: Scenario, run_dir: Path, resume: bool, stop: threading.Event | None = None
            ) -> tuple[str, str | None]:
    """Run (or skip, or continue) one run of a sweep into `run_dir`; returns (status, error)."""
    from fedsim import checkpoint
    from fedsim.runner import Interrupted, resumable, run, run_from_checkpoint

    try:
        if resume and (run_dir / "summary.json").is_file():
            return "skipped", None
        if resume and (run_dir / checkpoint.FILE).is_file():
            run_from_checkpoint(run_dir, *resumable(run_dir), stop=stop)
            return "done", None
        if run_dir.exists():  # a leftover with neither a result nor a checkpoint
            shutil.rmtree(run_dir)
        run(scenario, run_dir, stop=stop)
        return "done", None
    except Interrupted:
        return "stopped", None
    except Exception as exc:  # noqa: BLE001 - a failed run is reported, the other runs still run
        return "failed", str(exc) if isinstance(exc, FedsimError) else f"{type(exc).__name__}: {exc}"


def _load_result(item: SweepRun) -> None:
    if item.status in ("done", "skipped"):
        from fedsim.results import load_run

        item.result = load_run(item.run_dir)


def _quiet_worker() -> None:
    """A sweep's worker process leaves Ctrl-C to the sweep (which stops starting runs) and computes on one
    thread, so `parallel` runs share the cores instead of fighting over them."""
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def _run_parallel(runs: list[SweepRun], resume: bool, stop: threading.Event | None, parallel: int,
                  on_start, on_end) -> list[SweepRun]:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads or Ray state
    pending, running = list(enumerate(runs)), {}
    with ProcessPoolExecutor(parallel, mp_context=context, initializer=_quiet_worker) as pool:
        while pending or running:
            while pending and len(running) < parallel and not (stop is not None and stop.is_set()):
                index, item = pending.pop(0)
                if on_start:
                    on_start(item, index, len(runs))
                running[pool.submit(execute, item.scenario, item.run_dir, resume)] = (index, item)
            if not running:
                break
            finished, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in finished:
                index, item = running.pop(future)
                item.status, item.error = future.result()
                _load_result(item)
                if on_end:
                    on_end(item, index, len(runs))
    return runs


def run_elsewhere(scenario: Scenario) -> tuple[str, str | None, dict[str, bytes]]:
    """One sweep run inside a Ray task, on whichever node Ray picked: inline, in a temporary run dir whose files
    go back to the driver (so they land where the driver can read them, on any cluster)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        status, error = execute(scenario.with_overrides({"run.runtime": "inline"}), run_dir, resume=False)
        files = {str(f.relative_to(run_dir)): f.read_bytes() for f in run_dir.rglob("*") if f.is_file()} \
            if run_dir.is_dir() else {}
    return status, error, files


def _run_on_ray(runs: list[SweepRun], resume: bool, stop: threading.Event | None, address: str, on_start,
                on_end) -> list[SweepRun]:
    """Every run as a Ray task with its scenario's resources (retried on another node if its node is lost)."""
    import ray

    from fedsim.runtime.ray_cluster import attach

    snapshot = attach(address)
    try:
        task = ray.remote(max_retries=2)(run_elsewhere)  # max_retries: a task whose node dies runs again elsewhere
        pending: dict = {}
        for index, item in enumerate(runs):
            if resume and (item.run_dir / "summary.json").is_file():
                item.status = "skipped"
                _load_result(item)
                if on_end:
                    on_end(item, index, len(runs))
                continue
            if on_start:
                on_start(item, index, len(runs))
            resources = item.scenario.run.resources
            pending[task.options(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus).remote(item.scenario)] = \
                (index, item)
        while pending:
            if stop is not None and stop.is_set():
                for ref, (index, item) in pending.items():
                    ray.cancel(ref)
                    item.status = "stopped"
                break
            done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in done:
                index, item = pending.pop(ref)
                try:
                    item.status, item.error, files = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    item.status, item.error, files = "failed", f"{type(exc).__name__}: {exc}", {}
                if files:
                    if item.run_dir.exists():
                        shutil.rmtree(item.run_dir)
                    for name, data in files.items():
                        (item.run_dir / name).parent.mkdir(parents=True, exist_ok=True)
                        (item.run_dir / name).write_bytes(data)
                _load_result(item)
                if on_end:
                    on_end(item, index, len(runs))
    finally:
        ray.shutdown()
        if snapshot is not None:
            shutil.rmtree(snapshot.parent, ignore_errors=True)
    return runs
