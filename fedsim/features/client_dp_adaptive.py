"""Client-level DP with adaptive clipping (`privacy.mode = "client-dp-adaptive"`; Andrew et al., 2021,
"Differentially Private Learning with Adaptive Clipping"), the whole feature: DP-FedAvg with Poisson client sampling
whose clipping norm C follows a quantile of the clients' update norms, privately.

Each round, every sampled client's update is clipped to the current C and the server also releases how many
updates were *not* clipped, noised: b = (sum_i 1[||d_i|| <= C] + N(0, sigma_b^2)) / (q N). Then
C <- C exp(-eta (b - gamma)): C shrinks while more than the target share gamma of updates fit, grows while fewer do.
The two releases together are one Gaussian mechanism of noise multiplier z (the accounted one, as in client-dp):
the count has sensitivity 1 (under Poisson sampling the number of clients is not public, so the paper's centring
b - 1/2, sensitivity 1/2, does not apply), so the update's noise multiplier is z_d = (z^-2 - sigma_b^-2)^(-1/2).
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import MetricRecord

from fedsim.errors import ScenarioError
from fedsim.features.client_dp import ClientDP, client_dp_noise
from fedsim.seeding import derive_seed
from fedsim.strategies.dp_fedavg import PoissonDPFedAvg


def update_noise_multiplier(z: float, count_stddev: float) -> float:
    """z_d with z_d^-2 + count_stddev^-2 = z^-2: the update's share of the total noise multiplier z."""
    return (z ** -2 - count_stddev ** -2) ** -0.5


class AdaptiveClippingDPFedAvg(PoissonDPFedAvg):
    """PoissonDPFedAvg whose clipping norm follows the `target_quantile` of the update norms (geometric update)."""

    def __init__(self, *, clipped_count_stddev: float, target_quantile: float, clip_learning_rate: float,
                 **dp_fedavg_kwargs) -> None:
        super().__init__(**dp_fedavg_kwargs)
        self.clipped_count_stddev, self.target_quantile = clipped_count_stddev, target_quantile
        self.clip_learning_rate = clip_learning_rate

    def update_noise_multiplier(self) -> float:
        return update_noise_multiplier(self.noise_multiplier, self.clipped_count_stddev)

    def observe_norms(self, server_round: int, norms: list[float]) -> None:
        """The private unclipped share of the round, then the geometric step of C towards the target quantile."""
        unclipped = sum(norm <= self.clipping_norm for norm in norms)
        rng = np.random.default_rng(derive_seed(self.seed, server_round, 9))
        share = (unclipped + rng.normal(0.0, self.clipped_count_stddev)) / self._expected_cohort
        self.clipping_norm *= math.exp(-self.clip_learning_rate * (share - self.target_quantile))

    def aggregate_partials(self, server_round, replies, partials):
        used = self.clipping_norm
        arrays, metrics = super().aggregate_partials(server_round, replies, partials)
        if arrays is not None:  # the norm this round clipped at and the next round's (both are released)
            metrics = MetricRecord({**(metrics or {}), "clipping-norm": used, "next-clipping-norm": self.clipping_norm})
        return arrays, metrics


class ClientDPAdaptive(ClientDP):
    name, mode = "client-dp-adaptive", "client-dp-adaptive"

    def check(self, scenario, data, model):
        model = super().check(scenario, data, model)
        z = client_dp_noise(scenario)
        stddev = self.count_stddev(scenario)
        if stddev <= z:
            raise ScenarioError("privacy.clipped_count_stddev", f"{stddev:g} leaves no noise for the updates: it must "
                                f"exceed the noise multiplier {z:.4g} (z_d = (z^-2 - stddev^-2)^-1/2)",
                                f"set privacy.clipped_count_stddev > {z:.4g} (e.g. {2 * z:.3g}), or lower the noise")
        return model

    @staticmethod
    def count_stddev(scenario) -> float:
        """sigma_b: given, or the paper's default of the expected cohort / 20."""
        p = scenario.privacy
        given = p.clipped_count_stddev
        return given if given is not None else p.q * scenario.data.partitioner.num_partitions / 20

    def private_strategy(self, scenario) -> AdaptiveClippingDPFedAvg:
        s, p = scenario.strategy, scenario.privacy
        evaluate = s.node_minimums(scenario.data.partitioner.num_partitions)["min_evaluate_nodes"]
        return AdaptiveClippingDPFedAvg(
            noise_multiplier=client_dp_noise(scenario), clipping_norm=p.clipping_norm, sample_rate=p.q,
            seed=scenario.run.seed, fraction_evaluate=s.fraction_evaluate, min_evaluate_nodes=evaluate,
            min_available_nodes=1, clipped_count_stddev=self.count_stddev(scenario),
            target_quantile=p.target_unclipped_quantile, clip_learning_rate=p.clip_learning_rate)


FEATURE = ClientDPAdaptive()
