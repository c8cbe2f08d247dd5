"""The `fedsim` command in this process, printing `row N` on stdout (flushed) once round N's row is in
metrics.jsonl: a test reads that line (a blocking read, an event) instead of polling the run dir.

usage: python announcing_cli.py FEDSIM_ARGS...   (a test starts it with stdout=PIPE and calls wait_for_row)
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

from fedsim import results
from fedsim.cli import main

_after_round = results.RunRecorder.after_round


def _announcing(self, server_round, arrays, row, stopping):
    _after_round(self, server_round, arrays, row, stopping)
    print(f"row {server_round}", flush=True)


def wait_for_row(child: subprocess.Popen, n: int, timeout_s: float = 180.0) -> None:
    """Block on the child's stdout until it announces row n; fail with its stderr if it ends first or `timeout_s`
    passes (it is then killed). Reads the pipe's descriptor directly, so no line waits in a Python buffer."""
    deadline, seen = time.monotonic() + timeout_s, ""
    while f"row {n}\n" not in seen:
        ready, _, _ = select.select([child.stdout], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(child.stdout.fileno(), 4096).decode() if ready else ""
        if not chunk:
            if child.poll() is None:
                child.kill()
            raise AssertionError(f"no row {n} within {timeout_s} s: {child.communicate()[1][-3000:]}")
        seen += chunk


if __name__ == "__main__":
    results.RunRecorder.after_round = _announcing
    sys.argv = ["fedsim", *sys.argv[1:]]
    main()
