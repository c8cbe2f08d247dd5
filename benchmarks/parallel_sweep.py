"""Parallel sweeps: 8 runs of quickstart (seeds 0-7) one by one and with `fedsim sweep --parallel 2`.

`python benchmarks/parallel_sweep.py`: wall time of each (the whole `fedsim sweep` command, process start-up
included) and the speed-up; the runs' metrics are identical either way (tests/test_sweep_compare.py).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(runs: int = 8, parallel: int = 2) -> dict[str, float]:
    fedsim = str(Path(sys.executable).with_name("fedsim"))
    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "q.toml"
        sweep.write_text(f'base = "quickstart"\nseeds = {list(range(runs))}\n')
        times = {}
        for label, extra in (("one_by_one_s", []), ("parallel_s", ["--parallel", str(parallel)])):
            start = time.perf_counter()
            subprocess.run([fedsim, "sweep", str(sweep), "--out", f"{tmp}/{label}", *extra], check=True,
                           capture_output=True)
            times[label] = time.perf_counter() - start
    return {"runs": runs, "parallel": parallel, **times, "speedup": times["one_by_one_s"] / times["parallel_s"]}


if __name__ == "__main__":
    print(measure())
