"""One benchmark run in this process: `python runners.py RUNNER SCENARIO [--set k=v ...]` prints a JSON line.

RUNNER: plain (PyTorch loop) | stock-flower (Flower's Ray simulation) | fedsim-sequential (one client after another) |
fedsim-vectorized (inline, each round's clients trained together) | fedsim-ray (2 actors unless
run.resources.max_actors says otherwise, each training its clients together).
Reports seconds per round, final central test metrics, and the peak RSS of this process tree (Ray's workers
included), sampled every 0.1 s from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Self

import fedsim


def _tree_rss_mb(root: int) -> float:
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            rss[int(entry)] = int(stat.rsplit(")", 1)[1].split()[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, parent in parents.items() if parent == pid and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(rss.get(p, 0) for p in tree) / 2**20


class PeakRss:
    def __init__(self) -> None:
        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss_mb(os.getpid()))
            self._stop.wait(0.1)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_fedsim(scenario: fedsim.Scenario) -> tuple[list[float], dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        result = fedsim.run(scenario, out=Path(tmp) / "run")
    return [row["time_s"] for row in result.metrics], result.final


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runner", choices=["plain", "stock-flower", "fedsim-sequential", "fedsim-vectorized",
                                           "fedsim-ray"])
    parser.add_argument("scenario")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    scenario = fedsim.Scenario.load(args.scenario, args.sets)
    import torch

    torch.set_num_threads(max(1, int(scenario.run.resources.num_cpus)))  # what each fedsim client uses
    with PeakRss() as rss:
        if args.runner == "plain":
            from plain_fedavg import timed_plain_fedavg

            rounds, final = timed_plain_fedavg(scenario)
        elif args.runner == "stock-flower":
            from stock_flower import stock_flower

            rounds, final = stock_flower(scenario)
        elif args.runner in ("fedsim-sequential", "fedsim-vectorized"):
            vectorize = args.runner == "fedsim-vectorized"
            rounds, final = run_fedsim(scenario.with_overrides({"run.runtime": "inline", "run.vectorize": vectorize}))
        else:
            actors = scenario.run.resources.max_actors or 2
            rounds, final = run_fedsim(scenario.with_overrides({"run.runtime": "ray",
                                                                "run.resources.max_actors": actors,
                                                               "run.vectorize": True}))
    print(json.dumps({"round_s": rounds, "final": final, "peak_rss_mb": round(rss.peak, 1)}))


if __name__ == "__main__":
    main()
