"""DP-SGD overhead: one round of local training on every quickstart client, with and without DP-SGD (Opacus one
client at a time, and every client together with fedsim.stacked_dp_sgd).

All use the quickstart's client settings (MLP 64, 2 local epochs, batch 32) and 1 torch thread; the DP runs
include what a DP client does each round (Opacus wrapping, Poisson batches, per-example clipping, noise, accounting).
"""

from __future__ import annotations

import time

import torch

import fedsim
from fedsim.data import federated_data
from fedsim.features.dp_sgd import accountant_history, round_plan, train_dp_sgd
from fedsim.models import initial_model
from fedsim.protocol import LocalTraining
from fedsim.stacked_dp_sgd import PrivateClient, train_stacked_dp_sgd
from fedsim.training import train_locally


def measure(repeats: int = 3) -> dict[str, float]:
    torch.set_num_threads(1)
    scenario = fedsim.Scenario.load("quickstart").with_overrides({"privacy.mode": "dp-sgd",
                                                                  "privacy.noise_multiplier": 1.0})
    data = federated_data(scenario.data, scenario.run.seed)
    model = initial_model(scenario.model, data.info, 0)
    cfg = LocalTraining(**scenario.client.model_dump(exclude={"device"}))
    parts = [data.partition(i) for i in range(data.num_partitions)]
    best = {"plain": float("inf"), "dp": float("inf"), "dp_vectorized": float("inf")}
    history = [(1.0, 0.3, 30)]
    for _ in range(repeats):
        start = time.perf_counter()
        for i, (x, y) in enumerate(parts):
            train_locally(model, x, y, cfg, "classification", torch.Generator().manual_seed(i))
        best["plain"] = min(best["plain"], time.perf_counter() - start)
        start = time.perf_counter()
        for i, (x, y) in enumerate(parts):
            train_dp_sgd(model, x, y, cfg, "classification", i, 1.0, scenario.privacy, history)
        best["dp"] = min(best["dp"], time.perf_counter() - start)
        start = time.perf_counter()
        plans = [round_plan(len(x), cfg) for x, _ in parts]
        clients = [PrivateClient(x, y, torch.Generator().manual_seed(i), steps // cfg.local_epochs, 1.0)
                   for i, ((x, y), (_, steps)) in enumerate(zip(parts, plans))]
        train_stacked_dp_sgd(model, clients, cfg, "classification", scenario.privacy.max_grad_norm, 1024)
        for q, steps in plans:
            accountant_history(history, 1.0, q, steps, scenario.privacy.accountant)
        best["dp_vectorized"] = min(best["dp_vectorized"], time.perf_counter() - start)
    return {"clients": len(parts), "plain_s": best["plain"], "dp_s": best["dp"], "ratio": best["dp"] / best["plain"],
            "dp_vectorized_s": best["dp_vectorized"], "vectorized_ratio": best["dp_vectorized"] / best["plain"]}


if __name__ == "__main__":
    r = measure()
    print(f"{r['clients']} quickstart clients, one round each: plain {r['plain_s']:.3f} s, DP-SGD {r['dp_s']:.3f} s "
          f"({r['ratio']:.2f}x), DP-SGD vectorised {r['dp_vectorized_s']:.3f} s ({r['vectorized_ratio']:.2f}x)")
