"""Keep freed memory in the process: glibc's malloc hands large freed blocks back to the kernel (those above its
mmap threshold, and the heap's free top above its trim threshold), so a training step or an evaluation batch that
frees and re-allocates tens of MB every time has those pages faulted in afresh (zeroed by the kernel) every time.
PyTorch's CPU performance guide swaps in jemalloc or tcmalloc for this; fedsim sets glibc's own thresholds instead,
in the processes that run rounds and clients (fedsim.runner.make_grid, each Ray actor).

The cost: memory a process has freed stays its own (resident) for its next allocations rather than going back to
the system, up to the thresholds below. `FEDSIM_KEEP_FREED_MEMORY=0` leaves malloc as it is."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
KEPT_BYTES = 2**30  # blocks up to 1 GiB come from the heap and the heap keeps up to 1 GiB of free top


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to KEPT_BYTES for this process; False where malloc is not glibc's
    (or the environment says not to)."""
    if os.environ.get("FEDSIM_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): its allocator keeps its own policy
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEPT_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEPT_BYTES))
