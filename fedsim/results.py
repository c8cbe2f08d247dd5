"""Run directories: what a run writes (scenario.toml, metrics.jsonl, summary.json, model.pt) and reading it back."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedsim import checkpoint
from fedsim.errors import RunDirError, StorageError
from fedsim.files import atomic_write, load_tensors, save_tensors, storage
from fedsim.loop import RoundCallback
from fedsim.run_lock import RunLock
from fedsim.scenario import Scenario

TIMING_KEYS = ("time_s",)


@dataclass
class RunResult:
    """Everything a run produced, as in its run dir."""

    run_dir: Path
    scenario: Scenario
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    state_dict: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)

    @property
    def final(self) -> dict[str, float]:
        return self.summary["final"]


def new_run_dir(scenario: Scenario, out: str | Path | None) -> Path:
    """`out` if given, else runs/<name>-<timestamp> (suffixed if taken); not created here."""
    if out is not None:
        return Path(out)
    base = Path(scenario.output.dir) / f"{scenario.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


NOT_FINITE = "inf/nan"  # how a null of the run dir (a number the run produced that was not finite) is shown


def finite_json(value: Any) -> Any:
    """`value` with every float that is not finite as None: strict JSON (null), which every parser reads."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def progress(rows: list[dict[str, Any]], task: str, initial: dict[str, float] | None = None) -> dict[str, Any]:
    """Rounds done, the initial / final central metrics and the best round so far (a round without a finite
    value, written as null, is never the best)."""
    key = "mse" if task == "regression" else "accuracy"
    out: dict[str, Any] = {"rounds": len(rows), "initial": initial, "final": rows[-1]["eval"] if rows else initial}
    worst = math.inf if task == "regression" else -math.inf
    if rows:
        best_row = (min if task == "regression" else max)(
            rows, key=lambda r: worst if r["eval"].get(key) is None else r["eval"][key])
        out["best"] = {"round": best_row["round"], key: best_row["eval"][key]}
    return out


MODEL_RECORD = "model.json"  # what the run built: its class, parameter count, whether fedsim.run was given it


def read_model_record(run_dir: str | Path) -> dict[str, Any]:
    """A run dir's model.json ({} for run dirs written before it existed)."""
    path = Path(run_dir) / MODEL_RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


class RunRecorder(RoundCallback):
    """Writes the run dir round by round: the round callback that appends each round's row to metrics.jsonl
    (adding its wall time) and, at the end, writes summary.json and model.pt."""

    def __init__(self, run_dir: Path, scenario: Scenario, on_round: Callable[[dict], None] | None = None,
                 resume: dict | None = None, started: float | None = None, model: dict | None = None) -> None:
        """A new run dir, or with `resume` (a checkpoint) the run dir continued after the checkpoint's round:
        metrics.jsonl keeps the rows up to that round and drops any written after it. `started`: the
        time.perf_counter() the run's wall time counts from (default: now). `model`: what was built
        (fedsim.models.describe_model), written to model.json."""
        self.run_dir, self.scenario, self.on_round = run_dir, scenario, on_round
        self.rows: list[dict[str, Any]] = []
        self.initial: dict[str, float] = {}
        self.lock = RunLock(run_dir)  # held while this process writes the dir
        if resume is not None:
            self.lock.acquire()
            self.initial = checkpoint.decode(resume["initial"])  # written encoded (fedsim.callbacks.Checkpointer)
            self.rows = rows_until(run_dir, resume["round"])
            atomic_write(run_dir / "metrics.jsonl",
                          lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in self.rows)))
        else:
            if run_dir.exists() and not run_dir.is_dir():
                raise RunDirError(str(run_dir), "is a file, not a directory", "pass a directory path to --out")
            if run_dir.exists() and any(run_dir.iterdir()):
                raise RunDirError(str(run_dir), "already exists and is not empty", "pick another --out or remove it")
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                self.lock.acquire()
                (run_dir / "scenario.toml").write_text(scenario.to_toml(), encoding="utf-8")
                if model is not None:
                    (run_dir / MODEL_RECORD).write_text(json.dumps(model, indent=2), encoding="utf-8")
            except OSError as exc:
                raise RunDirError(str(run_dir), f"cannot be written: {exc.strerror or exc}",
                                  "pass an --out (or output.dir) you can write to") from None
        self._start = started if started is not None else time.perf_counter()
        self._last = time.perf_counter()
        self.startup_s: float | None = None  # from `started` to the first round (data, model, Ray's start-up)
        self.summary_extras: dict[str, Any] = {}  # e.g. the unlearning table
        self.stopped: str | None = None  # why the run ended before run.rounds, if it did
        self.diverged: tuple[int, str, float] | None = None  # run.stop_on_nan: (round, metric, value)
        self.on_finish: list[Callable[[RunResult], None]] = []  # called with the result once it is written

    def on_run_start(self, first_round: int, initial: dict[str, float] | None) -> None:
        if initial is not None:
            self.initial = initial
        self._last = time.perf_counter()
        self.startup_s = round(self._last - self._start, 3)

    def after_round(self, server_round: int, arrays, row: dict[str, Any], stopping: bool) -> None:
        now = time.perf_counter()
        row["time_s"] = round(now - self._last, 6)
        self._last = now
        row = finite_json(row)  # what the run dir holds: inf / nan as null
        self.rows.append(row)
        path = self.run_dir / "metrics.jsonl"
        size = path.stat().st_size if path.exists() else 0
        try:
            with storage(path), open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, allow_nan=False) + "\n")
        except StorageError:
            with contextlib.suppress(OSError):  # no half-written row left behind
                os.truncate(path, size)
            raise
        if self.on_round:
            self.on_round(row)

    def finish(self, state_dict: dict[str, torch.Tensor], task: str, runtime: dict | None = None) -> RunResult:
        summary = {
            "scenario": self.scenario.run.name,
            "task": task,
            **progress(self.rows, task, self.initial),
            "failures": sum(r["failures"] for r in self.rows),
            "wall_time_s": round(time.perf_counter() - self._start, 3),  # start-up included
            "startup_s": self.startup_s,
            "runtime": runtime or {},
        }
        for key in ("privacy", "label_privacy"):
            if self.rows and key in self.rows[-1]:
                summary[key] = self.rows[-1][key]
        summary.update(self.summary_extras)
        skipped = sum(1 for r in self.rows if r.get("skipped"))  # too few replies: the model stayed
        if skipped:
            summary["skipped_rounds"] = skipped
        if self.stopped:
            summary["stopped"] = self.stopped
        text = json.dumps(finite_json(summary), indent=2, allow_nan=False)
        atomic_write(self.run_dir / "summary.json", lambda p: p.write_text(text))
        state = {k: v.detach().clone() for k, v in state_dict.items()}
        if self.scenario.output.save_model:
            save_tensors(state, self.run_dir / "model.pt")
        (self.run_dir / "checkpoint.pt").unlink(missing_ok=True)  # finished: model.pt and summary.json say it all
        self.lock.release(remove=True)
        result = RunResult(self.run_dir, self.scenario, self.rows, summary, state)
        for finish in self.on_finish:
            finish(result)
        return result

    def discard(self) -> None:
        self.lock.release()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _read_rows(run_dir: Path, torn_tail: bool = False) -> list[dict[str, Any]]:
    """metrics.jsonl rows; with `torn_tail`, a last line cut short by a killed process is ignored."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if not (torn_tail and i == len(lines) - 1):
                raise
    return rows


def rows_until(run_dir: Path, last_round: int) -> list[dict[str, Any]]:
    """metrics.jsonl's rows of rounds 1..last_round, the ones a resume from that round's checkpoint keeps (later
    ones are dropped); RunDirError unless they are all there, in order (the file deleted, cut short or edited)."""
    path = run_dir / "metrics.jsonl"
    try:
        rows = [r for r in _read_rows(run_dir, torn_tail=True) if r["round"] <= last_round]
    except (json.JSONDecodeError, KeyError, TypeError):
        rows = None
    rounds = [r["round"] for r in rows] if rows is not None else None
    if rounds != list(range(1, last_round + 1)):
        found = ("is missing" if not path.is_file() else "is not readable" if rounds is None else
                 f"holds {len(rounds)} rows up to round {rounds[-1]}" if rounds else "holds no round")
        raise RunDirError(str(path), f"{found}, but the checkpoint is at round {last_round} (the file was changed "
                          "since)", "restore metrics.jsonl, or start the scenario again")
    return rows


def load_run(run_dir: str | Path, unfinished: bool = False) -> RunResult:
    """Read a finished run dir back (the model with weights_only=True); with `unfinished`, also one still
    running or interrupted: its rounds so far, a summary marked "unfinished", no model."""
    path = Path(run_dir)
    needed = ["scenario.toml", "metrics.jsonl", "summary.json"]
    missing = [n for n in needed if not (path / n).is_file()]
    if missing == ["summary.json"] and unfinished:
        try:
            rows = _read_rows(path, torn_tail=True)
        except json.JSONDecodeError as exc:
            raise RunDirError(str(path), f"corrupt metrics: {exc}", "re-run the scenario") from None
        task = "regression" if rows and "mse" in rows[0]["eval"] else "classification"
        scenario = Scenario.from_run_dir(path / "scenario.toml")
        summary = {"scenario": scenario.run.name, "task": task, **progress(rows, task), "unfinished": True,
                   "wall_time_s": round(sum(r.get("time_s", 0.0) for r in rows), 3)}
        return RunResult(path, scenario, rows, summary)
    if missing:
        interrupted = (path / "checkpoint.pt").is_file()
        raise RunDirError(str(path), f"not a finished run dir (missing {', '.join(missing)})",
                          f"finish it with `fedsim run --resume {path}`" if interrupted
                          else "pass a directory written by `fedsim run`")
    try:
        rows = _read_rows(path)
        summary = json.loads((path / "summary.json").read_text())
    except json.JSONDecodeError as exc:
        raise RunDirError(str(path), f"corrupt metrics or summary: {exc}", "re-run the scenario") from None
    model_file = path / "model.pt"
    state = load_tensors(model_file, "model file",
                         "re-run the scenario, or delete model.pt to read the metrics alone") \
        if model_file.is_file() else {}
    return RunResult(path, Scenario.from_run_dir(path / "scenario.toml"), rows, summary, state)


def without_timings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metrics rows with wall-clock fields removed, for comparing runs."""
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]
