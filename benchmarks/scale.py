"""Scale: 100,000 registered clients with 100 sampled per round, against 1,000 clients with the same per-client data.

`python benchmarks/scale.py [--clients 1000 100000] [--rounds 6]`: gaussian-regression (20 features, 10 examples per
client, IID), linear model, FedAvg sampling 100 clients a round, inline runtime; each setting runs in its own
process. Prints the peak resident memory of that process (VmHWM: ru_maxrss would carry over the peak of the
process that started it), the time to the first round (data,
partitioning, nodes), and the median round time of rounds 2..R; the ratio of round times should stay near 1 (the
work per round is the same 100 clients).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = """
import json, statistics, sys, fedsim
clients, rounds, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
scenario = fedsim.Scenario.from_dict({
    "run": {"name": f"scale-{clients}", "rounds": rounds, "checkpoint_every": 0},
    "data": {"dataset": "gaussian-regression", "test_fraction": 0.01,
             "generator": {"n_samples": round(10 * clients / 0.99), "n_features": 20, "noise_std": 1.0},
             "partitioner": {"name": "iid", "num_partitions": clients}},
    "model": {"name": "linear"},
    "client": {"batch_size": 10, "lr": 0.05},
    "strategy": {"name": "fedavg", "fraction_train": 100 / clients},
    "output": {"save_model": False}})
result = fedsim.run(scenario, out=out)
times = [r["time_s"] for r in result.metrics[1:]]
print(json.dumps({"clients": clients, "replies": result.metrics[-1]["replies"],
                  "peak_rss_mb": next(int(line.split()[1]) for line in open("/proc/self/status")
                                      if line.startswith("VmHWM")) / 1024,
                  "startup_s": result.summary["startup_s"], "round_s": statistics.median(times)}))
"""


def measure(clients: list[int], rounds: int = 6) -> list[dict]:
    """One row per client count: peak RSS, time to round 1, median round time, replies of the last round."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in clients:
            proc = subprocess.run([sys.executable, "-c", CHILD, str(n), str(rounds), f"{tmp}/{n}"],
                                  capture_output=True, text=True, check=True)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


def describe(rows: list[dict]) -> str:
    base = rows[0]["round_s"]
    return "; ".join(f"{r['clients']:,} clients: peak RSS {r['peak_rss_mb']:.0f} MB, start-up {r['startup_s']:.1f} s, "
                     f"round {r['round_s'] * 1000:.0f} ms ({r['round_s'] / base:.2f}x), {r['replies']} replies"
                     for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    print(describe(measure(args.clients, args.rounds)))


if __name__ == "__main__":
    main()
