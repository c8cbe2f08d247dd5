"""Where a vectorised round's time goes: `python round_profile.py [SCENARIO ...] [--rounds N] [--both] [--set K=V]`
(default bench-w1), inline, one torch thread.

Times the parts of every round by wrapping the functions that do them (wall clock, inclusive), after a warm-up
run: local training (fedsim.stacked), the rest of the client side (partitions, received loss, the cohort's partial
result or reply Messages), Flower's configure_train (FedAvg's, and its subclasses' that keep it: a Message per
client), the aggregation (fedsim.strategies.early.aggregate: Flower's aggregate_train on the partial results, or on
one reply per client), central evaluation, the checkpoint on the round's path (encoding its snapshot; the write
itself runs in the background), and the remainder (sampling, callbacks, metrics.jsonl). Means per round over all
rounds (the initial model's evaluation left out); "outside training" is the round minus local training, and without
Flower's configure_train and central evaluation (the workload's own test-set pass) what fedsim adds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from flwr.serverapp.strategy import FedAvg

import fedsim
from fedsim import callbacks, loop, server
from fedsim.clients import train_together as handler
from fedsim.runtime import inline

TRAINING = "client side: local training (fedsim.stacked)"  # inside the client side's total
CONFIGURE = "Flower's configure_train"
PARTS = {  # label -> (object, attribute) whose calls are timed
    TRAINING: (handler, "train_stacked"),
    "client side: total (partitions, received loss, training, partial results / replies)": (inline, "run_clients"),
    CONFIGURE: (FedAvg, "configure_train"),
    "aggregation": (loop, "aggregate"),
    "central evaluation": (server, "evaluate"),
    "checkpoint": (callbacks.Checkpointer, "after_round"),
}


def _timed(spent: dict[str, float], label: str, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[label] += time.perf_counter() - start

    return wrapper


def measure(name: str = "bench-w1", rounds: int | None = None, reduce_early: bool = True,
            sets: list[str] = ()) -> dict[str, float]:
    """Mean milliseconds per round of each part (and `round`, the whole round), vectorised, inline; `sets`:
    KEY=VALUE overrides (e.g. client.device="cuda")."""
    torch.set_num_threads(1)
    scenario = fedsim.Scenario.load(name, list(sets)).with_overrides(
        {"run.runtime": "inline", "run.vectorize": True, "run.reduce_early": reduce_early})
    if rounds is not None:
        scenario = scenario.with_overrides({"run.rounds": rounds})
    fedsim.run(scenario.with_overrides({"run.rounds": 1}), out=None)  # warm-up: imports, caches
    spent: dict[str, float] = defaultdict(float)
    originals = {label: getattr(obj, attr) for label, (obj, attr) in PARTS.items()}
    for label, (obj, attr) in PARTS.items():
        setattr(obj, attr, _timed(spent, label, originals[label]))
    class FromRoundOne(loop.RoundCallback):  # the initial model's central evaluation is not a round's
        def on_run_start(self, first_round, initial):
            spent.clear()

    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = fedsim.run(scenario, out=Path(tmp) / "run", callbacks=[FromRoundOne()])
    finally:
        for label, (obj, attr) in PARTS.items():
            setattr(obj, attr, originals[label])
    rounds = len(result.metrics)
    out = {label: 1000 * spent[label] / rounds for label in PARTS}
    out["round"] = 1000 * sum(row["time_s"] for row in result.metrics) / rounds
    out["clients"] = result.summary["runtime"]["vectorized_clients"] / rounds
    return out


def describe(parts: dict[str, float]) -> str:
    total, clients = parts["round"], parts["clients"]
    named = sum(v for k, v in parts.items() if k not in ("round", "clients", TRAINING))
    rows = [f"{label} {ms:.1f} ms ({ms / total:.0%})" for label, ms in parts.items()
            if label not in ("round", "clients")]
    rest, outside = total - named, total - parts[TRAINING]
    overhead = outside - parts["central evaluation"] - parts[CONFIGURE]
    return (f"round {total:.1f} ms: " + "; ".join(rows) + f"; the rest {rest:.1f} ms ({rest / total:.0%}). Outside "
            f"local training: {outside:.1f} ms ({outside / total:.0%}); outside local training, Flower's "
            f"configure_train and central evaluation (fedsim's own work): {overhead:.1f} ms ({overhead / total:.0%}), "
            f"{overhead / max(clients, 1):.2f} ms per client")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", default=["bench-w1"])
    parser.add_argument("--rounds", type=int, help="rounds per run (default: the scenario's)")
    parser.add_argument("--both", action="store_true", help="also with run.reduce_early = false (one reply each)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a scenario override")
    args = parser.parse_args()
    for name in args.scenarios:
        for reduce_early in (True, False) if args.both else (True,):
            label = "" if not args.both else (" early reduction" if reduce_early else " one reply per client")
            print(f"{name}{label}: {describe(measure(name, args.rounds, reduce_early, args.set))}", flush=True)


if __name__ == "__main__":
    main()
