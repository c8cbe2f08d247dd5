"""fedsim.allocator: a process that keeps freed memory serves a large block from its heap (reused once freed), not
from a fresh mapping the kernel must fault in and zero every time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fedsim.allocator import keep_freed_memory

MAPPED_WHILE_HELD = """
import ctypes
import numpy as np
from fedsim.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):  # glibc >= 2.33
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
kept = keep_freed_memory()
before = libc.mallinfo2().hblkhd  # bytes in mmapped blocks
block = np.ones(2**23)  # 64 MB
print(kept, libc.mallinfo2().hblkhd - before)
"""


def _mapped(keep: str) -> tuple[str, int]:
    env = {**os.environ, "FEDSIM_KEEP_FREED_MEMORY": keep}
    kept, mapped = subprocess.run([sys.executable, "-c", MAPPED_WHILE_HELD], env=env, capture_output=True,
                                  text=True, check=True).stdout.split()
    return kept, int(mapped)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_large_block_comes_from_the_heap():
    kept, mapped = _mapped("0")
    assert kept == "False" and mapped >= 2**26  # glibc's default: a block this large is mapped apart
    assert _mapped("1") == ("True", 0)


def test_the_environment_can_leave_malloc_alone(monkeypatch):
    monkeypatch.setenv("FEDSIM_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
