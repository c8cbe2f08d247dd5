"""DP-SGD overhead: one round of local training on every quickstart client, with and without DP-SGD (Opacus).

Both use the quickstart's client settings (MLP 64, 2 local epochs, batch 32) and 1 torch thread; the DP run
includes what a DP client does each round (Opacus wrapping, Poisson batches, per-example clipping, noise, accounting).
"""

from __future__ import annotations

import time

import torch
from fedsim.clients.dp_sgd import train_dp_sgd

import fedsim
from fedsim.data import federated_data
from fedsim.models import initial_model
from fedsim.protocol import LocalTraining
from fedsim.training import train_locally


def measure(repeats: int = 3) -> dict[str, float]:
    torch.set_num_threads(1)
    scenario = fedsim.Scenario.load("quickstart").with_overrides({"privacy.mode": "dp-sgd",
                                                                  "privacy.noise_multiplier": 1.0})
    data = federated_data(scenario.data, scenario.run.seed)
    model = initial_model(scenario.model, data.info, 0)
    cfg = LocalTraining(**scenario.client.model_dump(exclude={"device"}))
    parts = [data.partition(i) for i in range(data.num_partitions)]
    best = {"plain": float("inf"), "dp": float("inf")}
    for _ in range(repeats):
        start = time.perf_counter()
        for i, (x, y) in enumerate(parts):
            train_locally(model, x, y, cfg, "classification", torch.Generator().manual_seed(i))
        best["plain"] = min(best["plain"], time.perf_counter() - start)
        start = time.perf_counter()
        for i, (x, y) in enumerate(parts):
            train_dp_sgd(model, x, y, cfg, "classification", i, 1.0, scenario.privacy, [(1.0, 0.3, 30)])
        best["dp"] = min(best["dp"], time.perf_counter() - start)
    return {"clients": len(parts), "plain_s": best["plain"], "dp_s": best["dp"], "ratio": best["dp"] / best["plain"]}


if __name__ == "__main__":
    r = measure()
    print(f"{r['clients']} quickstart clients, one round each: plain {r['plain_s']:.3f} s, DP-SGD {r['dp_s']:.3f} s "
          f"({r['ratio']:.2f}x)")
