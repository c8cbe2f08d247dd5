"""FedLD (MICCAI 2024) server side: principal-gradient aggregation, as a Flower FedAvg subclass.

Definitions: docs/algorithms.md, FedLD. Per layer, with G the m x d matrix of client updates:
H = G G^T / m, eigen-pairs (s_j, e_j) descending, v_j = G^T e_j, k = int(m * k_proportion), and
    Delta = sum_{j<k} c_j w_j (1/m) sum_i |g_i| sign(g_i . w_j),   w_j = v_j / |v_j|,   c_j = s_j / sum(s).
Vectorised: |v_j|^2 = m s_j and G v_j = m H e_j, so after the m x m Gram matrix and its eigen-decomposition the
whole update is one product G^T b. The majority-sign flip of v_j in the reference does not change Delta (both
sign(g_i . w_j) and w_j flip), so it needs no tie-break here.

Where the reference code breaks, this implementation does the following (and tests it):
- m = 1 (k would be 0): k is at least 1, so a single client's update passes through unchanged;
- g_i . w_j = 0 (the reference divides by zero): that client adds nothing along w_j (sign 0);
- fewer non-zero eigenvalues than k (layers with fewer entries than clients, identical updates): only
  directions with s_j > 1e-12 * s_max are used; an all-zero layer gives Delta = 0;
- layers with a single entry are averaged, as in the reference;
- m is the number of replies actually received (partial participation, failed clients).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedsim import protocol
from fedsim.arrays import NpyArray, record_to_state
from fedsim.reduction import STACK, Partial, Reduction, merged, partial_of_replies, split_replies

if TYPE_CHECKING:  # torch loads with the first aggregation, not with a scenario's validation (the registry)
    import torch

EIGEN_FLOOR = 1e-12  # relative to the largest eigenvalue: smaller ones are numerical zeros


def principal_layer_update(g: torch.Tensor, k_proportion: float = 0.8, weights: torch.Tensor | None = None
                           ) -> torch.Tensor:
    """Delta for one layer: `g` is (m, d) float64 (one flattened update per client), on any device; `weights` sum
    to 1."""
    import torch

    m, d = g.shape
    w = torch.full((m,), 1.0 / m, dtype=g.dtype, device=g.device) if weights is None else weights
    if d == 1:
        return w @ g
    gram = g @ g.T  # m x m, the only O(m^2 d) step
    s, e = torch.linalg.eigh(gram / m)
    s, e = s.flip(0), e.flip(1)  # descending
    total = s.sum()
    k = max(1, int(m * k_proportion))
    keep = torch.nonzero(s[:k] > EIGEN_FLOOR * max(float(s[0]), 0.0)).view(-1) if total > 0 else s.new_zeros(0).long()
    if keep.numel() == 0:
        return g.new_zeros(d)
    s_k, e_k = s[keep], e[:, keep]
    signs = torch.sign(gram @ e_k)  # sign(g_i . v_j), since G v_j = G G^T e_j
    norms = torch.diagonal(gram).clamp(min=0.0).sqrt()  # |g_i|
    a = (w * norms) @ signs  # per direction: weighted mean of |g_i| sign(g_i . w_j)
    coeff = (s_k / total) * a / torch.sqrt(m * s_k)  # c_j a_j / |v_j|
    return g.T @ (e_k @ coeff)  # sum_j c_j a_j v_j / |v_j|


def principal_gradient_update(updates: list[dict[str, np.ndarray]], k_proportion: float = 0.8,
                              weights: Iterable[float] | None = None) -> dict[str, np.ndarray]:
    """FedLD's aggregated update: per state entry, the principal-gradient revision of the clients' updates.

    `updates`: one dict per reply, name -> (client weights - global weights). `weights`: None for the reference's
    uniform mean, or per-client weights (e.g. example counts), normalised here. Returns name -> update (float64).
    """
    import torch

    if not updates:
        raise ValueError("principal_gradient_update needs at least one client update")
    w = _normalised(weights)
    out = {}
    for name in updates[0]:
        g = torch.stack([torch.as_tensor(np.asarray(u[name]), dtype=torch.float64).reshape(-1) for u in updates])
        out[name] = principal_layer_update(g, k_proportion, w).numpy().reshape(np.shape(updates[0][name]))
    return out


def _normalised(weights: Iterable[float] | None, device: torch.device | None = None) -> torch.Tensor | None:
    import torch

    if weights is None:
        return None
    w = torch.tensor(list(weights), dtype=torch.float64, device=device)
    return w / w.sum()


class FedLD(FedAvg):
    """FedLD: FedAvg's sampling and configuration, principal-gradient aggregation, margin-control client loss.

    Round 1 (no history) is the plain mean of the updates; later rounds use `principal_gradient_update`.
    `server_lr` scales the aggregated update. `weighting`: "uniform" (reference) or "num-examples".
    The strategy also configures the clients' loss: `loss = "fedld-margin"`, `margin_lambda`, `margin_reduction`
    travel in the train ConfigRecord, so `FedLD()` alone sets up both sides.
    """

    def __init__(self, *, k_proportion: float = 0.8, server_lr: float = 1.0, weighting: str = "uniform",
                 margin_lambda: float = 0.1, margin_reduction: str = "batch", history_decay: float = 0.99,
                 **fedavg_kwargs) -> None:
        super().__init__(**fedavg_kwargs)
        if not 0 < k_proportion <= 1:
            raise ValueError(f"k_proportion must be in (0, 1], got {k_proportion}")
        if weighting not in ("uniform", "num-examples"):
            raise ValueError(f"weighting must be 'uniform' or 'num-examples', got {weighting!r}")
        if margin_reduction not in ("batch", "mean"):
            raise ValueError(f"margin_reduction must be 'batch' or 'mean', got {margin_reduction!r}")
        self.k_proportion, self.server_lr, self.weighting = k_proportion, server_lr, weighting
        self.margin_lambda, self.margin_reduction, self.history_decay = margin_lambda, margin_reduction, history_decay
        self.history: dict[str, np.ndarray] = {}  # EMA of Delta; in the reference it only flags "history exists"
        self._global: ArrayRecord | None = None

    # ---- state that survives checkpointing: plain arrays -----------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.history.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.history = {k: np.asarray(v, dtype=np.float64).copy() for k, v in state.items()}

    # ---- Flower strategy hooks -------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._global = arrays
        config[protocol.LOSS] = "fedld-margin"
        config[protocol.MARGIN_LAMBDA] = float(self.margin_lambda)
        config[protocol.MARGIN_REDUCTION] = self.margin_reduction
        return super().configure_train(server_round, arrays, config, grid)

    @property
    def uniform_clients(self) -> bool:
        """Every reply counts the same, whatever its example count (weighting = "uniform", the reference)."""
        return self.weighting == "uniform"

    def reduction(self, server_round: int) -> Reduction:
        """A cohort sends its members' states stacked (the principal gradients need every update)."""
        return Reduction(STACK, self.weighted_by_key)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.aggregate_partials(server_round, replies, [])

    def aggregate_partials(self, server_round: int, replies: Iterable[Message], partials: list[Partial]
                           ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The aggregate of every client's update, from the replies' arrays and the cohorts' stacks (fedsim.reduction),
        computed per layer in float64 on the device the stacks are on."""
        import torch

        good, own = split_replies(replies, partials, self.weighted_by_key)
        if not good or self._global is None:
            return None, None
        parts = [*partials, *([partial_of_replies(own, self.reduction(server_round))] if own else [])]
        stack = merged(parts)
        global_state = record_to_state(self._global)
        device = next(iter(stack.arrays.values())).device
        weights = None if self.weighting == "uniform" else _normalised(stack.weights, device)
        share = torch.full((len(stack.nodes),), 1.0 / len(stack.nodes), dtype=torch.float64, device=device) \
            if weights is None else weights
        delta = {}
        for key, start in global_state.items():
            g = (stack.arrays[key].double() - start.to(device).double()).reshape(len(stack.nodes), -1)
            if not self.history:  # first aggregation: plain mean, as in the reference
                layer = share @ g
            else:
                layer = principal_layer_update(g, self.k_proportion, weights)
            delta[key] = layer.reshape(start.shape).cpu().numpy()
        self.history = {k: self.history_decay * self.history.get(k, 0.0) + (1 - self.history_decay) * v
                        for k, v in delta.items()}
        new = ArrayRecord()
        for key, start in global_state.items():
            value = start.numpy().astype(np.float64)
            updated = value + self.server_lr * delta[key]
            if np.issubdtype(start.numpy().dtype, np.integer):
                updated = np.rint(updated)
            new[key] = NpyArray.from_numpy_ndarray(updated.astype(start.numpy().dtype))
        return new, self.train_metrics_aggr_fn([m.content for m in good], self.weighted_by_key)
