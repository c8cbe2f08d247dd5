"""FedLD aggregation speed: `principal_gradient_update` vs computing the per-layer Gram matrices alone.

m = 50 client updates of a 1M-parameter model (a 1000x1000 layer, a 1000x10 layer and biases, ~1.01M entries);
both timings include stacking each layer's updates into the (m, d) float64 matrix. Median of 5.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from fedsim.strategies.fedld import principal_gradient_update

SHAPES = {"fc1.weight": (1000, 1000), "fc1.bias": (1000,), "fc2.weight": (10, 1000), "fc2.bias": (10,)}


def gram_only(updates: list[dict[str, np.ndarray]]) -> None:
    for name in updates[0]:
        g = np.stack([np.asarray(u[name], dtype=np.float64).reshape(-1) for u in updates])
        g @ g.T


def measure(m: int = 50, repeats: int = 5) -> dict[str, float]:
    rng = np.random.default_rng(0)
    updates = [{k: rng.normal(0.1, 1.0, s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(m)]
    timings = {"gram": [], "fedld": []}
    for _ in range(repeats):
        start = time.perf_counter()
        gram_only(updates)
        timings["gram"].append(time.perf_counter() - start)
        start = time.perf_counter()
        principal_gradient_update(updates)
        timings["fedld"].append(time.perf_counter() - start)
    gram, fedld = statistics.median(timings["gram"]), statistics.median(timings["fedld"])
    return {"params": sum(int(np.prod(s)) for s in SHAPES.values()), "m": m, "gram_s": gram, "fedld_s": fedld,
            "ratio": fedld / gram}


if __name__ == "__main__":
    r = measure()
    print(f"{r['params']:,} parameters, m = {r['m']}: Gram matrices alone {r['gram_s']:.3f} s, "
          f"principal_gradient_update {r['fedld_s']:.3f} s ({r['ratio']:.2f}x)")
