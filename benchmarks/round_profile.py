"""Where a vectorised round's time goes: `python round_profile.py [SCENARIO]` (default bench-w1), inline.

Times the parts of every round by wrapping the functions that do them (wall clock, inclusive), after a warm-up
run: local training (fedsim.stacked), the rest of the client side (partitions, received loss, reply Messages),
Flower's FedAvg.aggregate_train (reply checks, array and metric aggregation), central evaluation, the
checkpoint, and the remainder (sampling, configure, callbacks, metrics.jsonl). Means per round over all rounds.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from flwr.serverapp.strategy import FedAvg

import fedsim
from fedsim import checkpoint, server
from fedsim.clients import train_together as handler
from fedsim.runtime import inline

TRAINING = "client side: local training (fedsim.stacked)"  # inside the client side's total
PARTS = {  # label -> (object, attribute) whose calls are timed
    TRAINING: (handler, "train_stacked"),
    "client side: total (partitions, received loss, training, reply Messages)": (inline, "run_clients"),
    "Flower FedAvg.aggregate_train": (FedAvg, "aggregate_train"),
    "central evaluation": (server, "evaluate"),
    "checkpoint": (checkpoint, "write"),
}


def _timed(spent: dict[str, float], label: str, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[label] += time.perf_counter() - start

    return wrapper


def measure(name: str = "bench-w1") -> dict[str, float]:
    """Mean milliseconds per round of each part (and `round`, the whole round), vectorised, inline."""
    torch.set_num_threads(1)
    scenario = fedsim.Scenario.load(name).with_overrides({"run.runtime": "inline", "run.vectorize": True})
    fedsim.run(scenario.with_overrides({"run.rounds": 2}), out=None)  # warm-up: imports, caches
    spent: dict[str, float] = defaultdict(float)
    originals = {label: getattr(obj, attr) for label, (obj, attr) in PARTS.items()}
    for label, (obj, attr) in PARTS.items():
        setattr(obj, attr, _timed(spent, label, originals[label]))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = fedsim.run(scenario, out=Path(tmp) / "run")
    finally:
        for label, (obj, attr) in PARTS.items():
            setattr(obj, attr, originals[label])
    rounds = len(result.metrics)
    out = {label: 1000 * spent[label] / rounds for label in PARTS}
    out["round"] = 1000 * sum(row["time_s"] for row in result.metrics) / rounds
    return out


def describe(parts: dict[str, float]) -> str:
    total = parts["round"]
    named = sum(v for k, v in parts.items() if k not in ("round", TRAINING))
    rows = [f"{label} {ms:.1f} ms ({ms / total:.0%})" for label, ms in parts.items() if label != "round"]
    rest = total - named
    return f"round {total:.1f} ms: " + "; ".join(rows) + f"; the rest {rest:.1f} ms ({rest / total:.0%})"


if __name__ == "__main__":
    print(describe(measure(*sys.argv[1:])))
