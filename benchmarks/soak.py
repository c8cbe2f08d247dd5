"""Soak test: a long run with unreliable clients must finish, never hang, and keep its memory flat.

`make soak` (or `python benchmarks/soak.py [--rounds 200]`): `quickstart` for 200 rounds with 20% of sampled clients
dropping out and 5% failing, a checkpoint written every round; prints resident memory (RSS) at round 20 and at the
end, their ratio (target <= 1.10), the skipped rounds and fault counts.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import fedsim


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    scenario = fedsim.Scenario.load("quickstart", {
        "run.rounds": args.rounds, "faults": {"dropout_rate": 0.2, "failure_rate": 0.05}})
    rss: dict[int, float] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = fedsim.run(scenario, out=Path(tmp) / "soak", on_round=lambda row: rss.update({row["round"]: rss_mb()}))
    wall = time.perf_counter() - start
    rows = result.metrics
    faults = {k: sum(r["faults"][k] for r in rows) for k in ("dropped", "failed", "straggled")}
    early = rss[min(20, args.rounds)]
    print(f"soak: {len(rows)}/{args.rounds} rounds in {wall:.1f} s, final accuracy {result.final['accuracy']:.4f}")
    print(f"faults: {faults['dropped']} dropped, {faults['failed']} failed; "
          f"skipped rounds: {sum(bool(r.get('skipped')) for r in rows)}")
    print(f"RSS: round 20 {early:.1f} MB, round {args.rounds} {rss[args.rounds]:.1f} MB, "
          f"ratio {rss[args.rounds] / early:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
