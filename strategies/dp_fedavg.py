"""Client-level DP-FedAvg with Poisson client sampling (McMahan et al. 2018), for Opacus's accountants.

Why not Flower's `DifferentialPrivacyServerSideFixedClipping`: it samples a fixed number of clients and scales the
noise by that number, while Opacus's subsampled-Gaussian accountants assume each client is included independently
with probability q. This is the smallest strategy that matches the accountant: every round each client is sampled
with probability q (seeded by (seed, round)); each update is scaled by min(1, C / norm) to `clipping_norm` C (the
flat clipping of Flower's DP wrappers); N(0, (sigma C)^2) noise is added to the sum; the sum is divided by the
expected cohort size q N. A round with no sampled client still adds noise (the accountant counts every round).

Clients trained together clip where they trained: a cohort sends the sum of its members' clipped updates and their
norms (fedsim.reduction, CLIPPED_SUM); the replies of clients that ran one by one are clipped here the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedsim import protocol
from fedsim.arrays import NpyArray, record_to_state
from fedsim.reduction import CLIPPED_SUM, Partial, Reduction, merged, partial_of_replies, split_replies
from fedsim.seeding import derive_seed


class PoissonDPFedAvg(FedAvg):
    """DP-FedAvg: Poisson sampling at rate `sample_rate`, per-client clipping, Gaussian noise on the sum."""

    # The accountant composes one subsampled Gaussian per round: under simulated faults a round is aggregated (noise
    # added, the model moved) however few clients answered, never skipped (fedsim.loop). A dropped or failed
    # client is one Poisson-sampled client fewer, independent of its data: the rate really applied is at most q.
    releases_every_round = True

    def __init__(self, *, noise_multiplier: float, clipping_norm: float, sample_rate: float, seed: int = 0,
                 **fedavg_kwargs) -> None:
        super().__init__(**fedavg_kwargs)
        self.noise_multiplier, self.clipping_norm, self.sample_rate = noise_multiplier, clipping_norm, sample_rate
        self.seed = seed
        self._global: ArrayRecord | None = None
        self._expected_cohort = 1.0

    def update_noise_multiplier(self) -> float:
        """The multiplier of the noise on the summed updates (a variant that also releases another statistic, as
        adaptive clipping's count, spends part of `noise_multiplier` there)."""
        return self.noise_multiplier

    def observe_norms(self, server_round: int, norms: list[float]) -> None:
        """After aggregation: the norms of the round's updates before clipping (for a variant's own use)."""

    def noise_std(self) -> float:
        """Standard deviation of the noise in the averaged update: sigma C / (q N)."""
        return self.update_noise_multiplier() * self.clipping_norm / self._expected_cohort

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        nodes = sorted(grid.get_node_ids())
        rng = np.random.default_rng(derive_seed(self.seed, server_round, 7))
        chosen = [n for n, u in zip(nodes, rng.random(len(nodes))) if u < self.sample_rate]
        self._global = arrays
        self._expected_cohort = self.sample_rate * len(nodes)
        config[protocol.SERVER_ROUND] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=node) for node in chosen]

    def reduction(self, server_round: int) -> Reduction:
        """A cohort sends the sum of its members' updates, each clipped to this round's clipping norm."""
        return Reduction(CLIPPED_SUM, self.weighted_by_key, self.clipping_norm)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.aggregate_partials(server_round, replies, [])

    def aggregate_partials(self, server_round: int, replies: Iterable[Message], partials: list[Partial]
                           ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """global + (sum of clipped updates + N(0, (sigma C)^2)) / (q N), from the cohorts' clipped sums and the
        other replies' arrays (clipped here, in float64)."""
        good, own = split_replies(replies, partials, self.weighted_by_key)
        if self._global is None:
            return None, None
        state = record_to_state(self._global)
        parts = list(partials)
        if own:
            parts.append(partial_of_replies(own, self.reduction(server_round), state))
        summed = merged(parts) if parts else None
        rng = np.random.default_rng(derive_seed(self.seed, server_round, 8))
        sigma = self.update_noise_multiplier() * self.clipping_norm
        new = ArrayRecord()
        for key, start in state.items():
            g = start.numpy().astype(np.float64)
            acc = summed.arrays[key].cpu().numpy() if summed is not None else np.zeros_like(g)
            noisy = (acc + rng.normal(0.0, sigma, acc.shape)) / self._expected_cohort
            new[key] = NpyArray.from_numpy_ndarray((g + noisy).astype(start.numpy().dtype))
        metrics = self.train_metrics_aggr_fn([m.content for m in good], self.weighted_by_key) if good else None
        self.observe_norms(server_round, summed.norms if summed is not None else [])
        return new, metrics
