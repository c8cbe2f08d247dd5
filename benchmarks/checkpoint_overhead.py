"""What checkpointing every round costs: one checkpoint write of the bench-w1 model (64-64-10 MLP, fsync included,
median of 50), and bench-w1 (100 clients) with checkpoint_every = 1 and 0, alternated in one process, 3 repetitions
each: the median steady time per round and the ratio."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import fedsim
from fedsim import checkpoint
from fedsim.arrays import state_to_record
from fedsim.server import prepare


def write_ms() -> float:
    arrays = state_to_record(prepare(fedsim.Scenario.load("bench-w1")).model.state_dict())
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(50):
            start = time.perf_counter()
            checkpoint.write(Path(tmp), {"round": 1, "arrays": checkpoint.encode(arrays)})
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    print(f"one checkpoint write of the bench-w1 model: {write_ms():.2f} ms")
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
