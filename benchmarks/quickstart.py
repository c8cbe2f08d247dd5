"""`make bench`: the quickstart scenario through fedsim vs the same training as a plain PyTorch loop.

Measured side by side in one process (alternating, median of --repeats), plus the CLI's full wall time
(`fedsim run quickstart`, imports included) in a subprocess. The stock-Flower (Ray simulation) column
arrives with the Ray runtime issue.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from plain_fedavg import plain_fedavg
from rich.console import Console
from rich.table import Table

import fedsim
from fedsim.data import federated_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    scenario = fedsim.Scenario.load("quickstart")
    federated_data(scenario.data, scenario.run.seed)  # both sides start with partitions cached
    times: dict[str, list[float]] = {"plain PyTorch loop": [], "fedsim inline": []}
    accuracy: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            start = time.perf_counter()
            _, metrics = plain_fedavg(scenario)
            times["plain PyTorch loop"].append(time.perf_counter() - start)
            accuracy["plain PyTorch loop"] = metrics["accuracy"]
            start = time.perf_counter()
            result = fedsim.run(scenario, out=Path(tmp) / f"run{rep}")
            times["fedsim inline"].append(time.perf_counter() - start)
            accuracy["fedsim inline"] = result.final["accuracy"]
        fedsim_cli = Path(sys.executable).with_name("fedsim")
        start = time.perf_counter()
        subprocess.run([str(fedsim_cli), "run", "quickstart", "-q", "--out", str(Path(tmp) / "cli")], check=True,
                       capture_output=True)
        cli_wall = time.perf_counter() - start
    base = statistics.median(times["plain PyTorch loop"])
    table = Table(title=f"quickstart (digits, MLP, 20 clients, 30 rounds), median of {args.repeats}")
    for col in ("runner", "seconds", "x plain loop", "final accuracy"):
        table.add_column(col, justify="right" if col != "runner" else "left")
    for name, values in times.items():
        med = statistics.median(values)
        table.add_row(name, f"{med:.2f}", f"{med / base:.2f}", f"{accuracy[name]:.4f}")
    table.add_row("`fedsim run quickstart` (CLI, imports incl.)", f"{cli_wall:.2f}", f"{cli_wall / base:.2f}",
                  f"{accuracy['fedsim inline']:.4f}")
    Console().print(table)


if __name__ == "__main__":
    main()
