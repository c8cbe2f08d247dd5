"""Checkpoints: everything a run needs to continue exactly after its last complete round.

`RUN_DIR/checkpoint.pt` holds the round number, the global model, the strategy's state (its attributes: FedLD's
history, FedOpt's moments, ...), the privacy monitor, the Grid's counters, every client's `context.state`
(DP accountants, bag releases) and the process-wide random generators. It is written atomically (temp file + rename) and
holds only tensors, numbers,
strings, lists and dicts, so it loads with `torch.load(weights_only=True)`: nothing in it is unpickled or run.
"""

from __future__ import annotations

import random
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy

from fedsim.arrays import state_to_record
from fedsim.errors import RunDirError
from fedsim.files import load_tensors, save_tensors

FILE = "checkpoint.pt"
FORMAT = 1
_TAG = "$checkpoint-type"


class Unencodable(TypeError):
    """A value a checkpoint cannot hold (a function, an open resource, an arbitrary object)."""


def _tagged(kind: str, value: Any) -> dict:
    return {_TAG: kind, "value": value}


def encode(value: Any) -> Any:
    """`value` as tensors, numbers, strings, lists and dicts (tagged where the type must come back)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, np.ndarray):
        return _tagged("ndarray", torch.from_numpy(np.array(value)))
    if isinstance(value, ArrayRecord):
        return _tagged("arrays", {k: torch.from_numpy(a.numpy()) for k, a in value.items()})  # fresh copies
    if isinstance(value, ConfigRecord | MetricRecord):
        return _tagged(type(value).__name__, {k: encode(v) for k, v in value.items()})
    if isinstance(value, RecordDict):
        return _tagged("records", {k: encode(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return _tagged(type(value).__name__, [encode(v) for v in value])
    if isinstance(value, set | frozenset):
        return _tagged(type(value).__name__, [encode(v) for v in sorted(value)])
    if isinstance(value, dict):
        return _tagged("dict", [[encode(k), encode(v)] for k, v in value.items()])
    raise Unencodable(type(value).__name__)


def encode_arrays(state: dict[str, torch.Tensor]) -> dict:
    """An ArrayRecord as `encode` writes it, from the state dict already read from it (fedsim.arrays.StateReader:
    the round's global model is parsed once, for central evaluation and the checkpoint). A reader's tensors are
    never changed in place, so they are the snapshot themselves (no copy of the model a round)."""
    return _tagged("arrays", {k: t.detach().cpu() for k, t in state.items()})


def decode(value: Any) -> Any:
    if isinstance(value, torch.Tensor) or not isinstance(value, dict):
        return value
    kind, inner = value[_TAG], value["value"]
    if kind == "ndarray":
        return inner.numpy()
    if kind == "arrays":
        return state_to_record(inner)
    if kind in ("ConfigRecord", "MetricRecord"):
        return {"ConfigRecord": ConfigRecord, "MetricRecord": MetricRecord}[kind](
            {k: decode(v) for k, v in inner.items()})
    if kind == "records":
        return RecordDict({k: decode(v) for k, v in inner.items()})
    if kind in ("list", "tuple", "set", "frozenset"):
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[kind](decode(v) for v in inner)
    if kind == "dict":
        return {decode(k): decode(v) for k, v in inner}
    raise ValueError(f"unknown entry type {kind!r}")


def object_state(obj: Any) -> dict:
    """The attributes of `obj` a checkpoint can hold (callables and other objects are rebuilt by `prepare`);
    objects that define `checkpoint_state()` say what theirs is, nested strategies are captured too."""
    if hasattr(obj, "checkpoint_state"):
        return {"custom": obj.checkpoint_state()}
    attrs = {}
    for name, value in vars(obj).items():
        if callable(value) and not isinstance(value, type):
            continue
        try:
            attrs[name] = encode(value)
        except Unencodable:
            if isinstance(value, Strategy):  # a wrapped strategy
                attrs[name] = _tagged("object", object_state(value))
    return {"attrs": attrs}


def restore_object(obj: Any, state: dict) -> None:
    if "custom" in state:
        obj.restore_checkpoint(state["custom"])
        return
    for name, value in state["attrs"].items():
        if isinstance(value, dict) and value.get(_TAG) == "object":
            restore_object(getattr(obj, name), value["value"])
        else:
            setattr(obj, name, decode(value))


def rng_state() -> dict:
    """The process-wide generators (Python's, NumPy's, torch's CPU one). fedsim reseeds them from (seed, round,
    client) wherever it draws, so this is for code that does not, e.g. a custom strategy drawing in aggregate."""
    version, internal, gauss = random.getstate()  # Mersenne Twister's 625 words as one tensor, not 625 numbers
    return {"python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
            "numpy": encode(np.random.get_state()), "torch": torch.get_rng_state()}


def restore_rng(state: dict) -> None:
    python = state["python"]
    if isinstance(python, dict) and "internal" in python:
        random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss"]))
    else:  # a checkpoint written before the state became a tensor
        random.setstate(decode(python))
    np.random.set_state(decode(state["numpy"]))
    torch.set_rng_state(state["torch"])


def write(run_dir: Path, payload: dict) -> Path:
    """Write RUN_DIR/checkpoint.pt atomically: a reader sees the previous checkpoint or this one, never a mix."""
    return save_tensors({"format": FORMAT, **payload}, Path(run_dir) / FILE, durable=True)


class BackgroundWriter:
    """Writes checkpoints on a background thread, one after another, off the round's critical path. The payload is
    already encoded (a snapshot the next round cannot change: `encode` copies every tensor); `wait()` returns once
    the last one is on disk and raises its error (a full disk, say), so a run's end, a stop or a purge that needs it
    waits for it. A crash before the rename leaves the previous checkpoint, from which a resume is just as exact.
    One thread serves all the writes until `close()` (starting one per write cost ~0.1 ms a round)."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def write(self, run_dir: Path, payload: dict) -> None:
        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="fedsim-checkpoint")
        self._pending = self._pool.submit(write, run_dir, payload)

    def wait(self, raise_error: bool = True) -> None:
        pending, self._pending = self._pending, None
        error = pending.exception() if pending is not None else None
        if error is not None and raise_error:
            raise error

    def close(self, raise_error: bool = True) -> None:
        """wait(), then let the thread go (a later write starts another)."""
        try:
            self.wait(raise_error)
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None


def read(run_dir: Path) -> dict:
    """The checkpoint of RUN_DIR, or RunDirError naming the file when it is missing, truncated or corrupt."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        raise RunDirError(str(path), "no checkpoint (the run stopped before its first round completed, or "
                          "checkpoints were off)", "start the scenario again with `fedsim run`")
    payload = load_tensors(path, "checkpoint, truncated or corrupt",
                           "the run cannot resume from it; start the scenario again")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "round" not in payload:
        raise RunDirError(str(path), "not a fedsim checkpoint of this version", "start the scenario again")
    return payload
