"""What every file fedsim writes or reads back shares: atomic replacement, and tensor files read with
`torch.load(weights_only=True)` whose failure is a one-line error naming the file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedsim.errors import RunDirError


def atomic_write(path: Path, write: Callable[[Path], None], durable: bool = False) -> Path:
    """`write(tmp)` then rename over `path`: a reader sees the old file or the new one, never a mix. `durable`
    also flushes the new file to disk before the rename (checkpoints)."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    if durable:
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def save_tensors(obj: Any, path: Path, durable: bool = False) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp), durable)


def load_tensors(path: Path, what: str, fix: str) -> Any:
    """`torch.load(path, weights_only=True)`, or RunDirError 'PATH: unreadable WHAT (reason); FIX'."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt or holding more than tensors: one problem to the user
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise RunDirError(str(path), f"unreadable {what} ({reason})", fix) from None
