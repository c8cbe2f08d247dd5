"""What checkpointing every round costs: bench-w1 (100 clients, 64-64-10 MLP) with checkpoint_every = 1 and 0,
alternated in one process, 3 repetitions each; prints the median steady time per round and the ratio."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import fedsim


def main() -> None:
    per_round: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(3):
        for every, times in per_round.items():
            scenario = fedsim.Scenario.load("bench-w1", {"run.checkpoint_every": every})
            with tempfile.TemporaryDirectory() as tmp:
                rows = fedsim.run(scenario, out=Path(tmp) / "run").metrics[1:]  # round 1 warms caches
            times.append(statistics.mean(r["time_s"] for r in rows))
    off, on = statistics.median(per_round[0]), statistics.median(per_round[1])
    print(f"bench-w1 s/round: no checkpoints {off:.4f}, checkpoint every round {on:.4f}, ratio {on / off:.3f}")


if __name__ == "__main__":
    main()
