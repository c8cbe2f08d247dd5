"""One writer per run dir: a run holds an exclusive lock on RUN_DIR/.lock for as long as it writes the dir.

The lock is the kernel's (flock), so it goes with the process however that ends, `kill -9` included; a second
`fedsim run --resume` of a live run dir is refused with one line naming the process that holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from fedsim.errors import RunDirError

FILE = ".lock"


def holder(run_dir: Path) -> int | None:
    """The pid of the live process writing `run_dir`, or None when no process holds its lock."""
    path = Path(run_dir) / FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = path.read_text().strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)  # (also releases the shared lock, if it was taken)
    return None


def refuse_if_live(run_dir: Path) -> None:
    pid = holder(run_dir)
    if pid is not None:
        raise RunDirError(str(run_dir), f"is being written by a running fedsim process (pid {pid})",
                          "wait for it to finish, or stop it (Ctrl-C, or kill it) and then resume")


class RunLock:
    """The exclusive lock of a run dir, taken by `acquire()` (RunDirError if another process holds it), released
    by `release()` or when the process ends."""

    def __init__(self, run_dir: Path) -> None:
        self.path, self._fd = Path(run_dir) / FILE, None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)  # held read-only: the disk can still turn ro
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            refuse_if_live(self.path.parent)
            raise RunDirError(str(self.path.parent), "is being written by another fedsim process",
                              "wait for it to finish, or stop it and then resume") from None
        self._fd = fd
        with contextlib.suppress(OSError):  # whose it is, for the refusal's message (the run's own writes report a
            self.path.write_text(str(os.getpid()))  # full or read-only disk)

    def release(self, remove: bool = False) -> None:
        """Let go of the lock; `remove`: also delete the lock file (a finished run dir)."""
        if self._fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
