"""What every file fedsim writes or reads back shares: atomic replacement, and tensor files read with
`torch.load(weights_only=True)` whose failure is a one-line error naming the file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from fedsim.errors import RunDirError, StorageError

STORAGE_FIX = "free space or make the directory writable, then continue with `fedsim run --resume RUN_DIR` (its " \
              "last checkpoint is intact)"


@contextlib.contextmanager
def storage(path: Path) -> Iterator[None]:
    """Turn a failed write under `path` (disk full, read-only file system, permission denied) into a one-line
    StorageError naming it."""
    try:
        yield
    except OSError as exc:
        raise StorageError(str(path), f"cannot be written ({exc.strerror or type(exc).__name__})", STORAGE_FIX) \
            from None


def atomic_write(path: Path, write: Callable[[Path], None], durable: bool = False) -> Path:
    """`write(tmp)` then rename over `path`: a reader sees the old file or the new one, never a mix. `durable`
    also flushes the new file to disk before the rename (checkpoints). A failed write removes its temporary
    file, leaves the old `path` as it was and raises StorageError."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with storage(path):
            write(tmp)
            if durable:
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


def save_tensors(obj: Any, path: Path, durable: bool = False) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # through a Python file, so a full disk is an OSError (not torch's RuntimeError)
            torch.save(obj, fh)

    return atomic_write(path, write, durable)


def load_tensors(path: Path, what: str, fix: str) -> Any:
    """`torch.load(path, weights_only=True)`, or RunDirError 'PATH: unreadable WHAT (reason); FIX'."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt or holding more than tensors: one problem to the user
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise RunDirError(str(path), f"unreadable {what} ({reason})", fix) from None
