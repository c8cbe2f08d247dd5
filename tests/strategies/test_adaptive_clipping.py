"""Client-level DP with adaptive clipping (fedsim.features.client_dp_adaptive) against its definition (Andrew et al.,
2021) and against Flower's DifferentialPrivacyServerSideAdaptiveClipping, which clips the same way."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping, FedAvg

import fedsim
from fedsim.arrays import state_to_record
from fedsim.checkpoint import object_state, restore_object
from fedsim.errors import ScenarioError
from fedsim.features.client_dp_adaptive import AdaptiveClippingDPFedAvg, update_noise_multiplier
from fedsim.privacy import epsilon_of
from fedsim.runtime import InlineGrid


def strategy(**overrides) -> AdaptiveClippingDPFedAvg:
    settings = {"noise_multiplier": 1e-6, "clipping_norm": 0.1, "sample_rate": 1.0, "seed": 0,
                "clipped_count_stddev": 1e-3, "target_quantile": 0.5, "clip_learning_rate": 0.2, **overrides}
    return AdaptiveClippingDPFedAvg(**settings)


def replies(strategy, norms: list[float], server_round: int = 1) -> list[Message]:
    """Train replies whose updates (from a zero model) have these norms, to messages `strategy` configured."""
    zero = state_to_record({"w": torch.zeros(4)})
    sent = list(strategy.configure_train(server_round, zero, ConfigRecord(), InlineGrid(None, len(norms), {})))
    out = []
    for msg, norm in zip(sent, norms):
        update = torch.tensor([norm, 0.0, 0.0, 0.0])
        content = RecordDict({"arrays": state_to_record({"w": update}), "metrics": MetricRecord({"num-examples": 10})})
        out.append(Message(content=content, reply_to=msg))
    return out


def test_the_two_releases_together_are_one_gaussian_of_the_accounted_multiplier():
    """RDP of a Gaussian of multiplier s at order a is a / (2 s^2); the update (sensitivity C, noise z_d C) and the
    count (sensitivity 1, noise sigma_b) add up to exactly the accounted z's."""
    for z, sigma_b in [(1.0, 1.5), (0.7, 5.0), (2.0, 2.1)]:
        z_d = update_noise_multiplier(z, sigma_b)
        assert z_d ** -2 + sigma_b ** -2 == pytest.approx(z ** -2, rel=1e-12)
        assert z_d > z  # the update pays for the count with more noise


def test_the_clipping_norm_converges_to_the_target_quantile_of_the_update_norms():
    norms = [float(n) for n in range(1, 11)]  # the median lies between 5 and 6
    for quantile, low, high in [(0.5, 5.0, 6.0), (0.8, 8.0, 9.0), (0.2, 2.0, 3.0)]:
        s = strategy(target_quantile=quantile)
        s._expected_cohort = len(norms)
        for server_round in range(1, 400):
            s.observe_norms(server_round, norms)
        assert low <= s.clipping_norm <= high * 1.05, (quantile, s.clipping_norm)


def test_each_round_clips_at_the_current_norm_as_flowers_adaptive_clipping_does():
    norms = [0.05, 0.5, 2.0, 8.0]
    ours = strategy(clipping_norm=1.0)
    ours_replies = replies(ours, norms)
    new, metrics = ours.aggregate_train(1, ours_replies)
    assert metrics["clipping-norm"] == 1.0
    # Flower's server-side wrapper clips every update in place by the same flat clipping at the same norm
    flower = DifferentialPrivacyServerSideAdaptiveClipping(FedAvg(), noise_multiplier=0.0, num_sampled_clients=4,
                                                           initial_clipping_norm=1.0)
    flower_replies = replies(ours, norms)
    flower.current_arrays = state_to_record({"w": torch.zeros(4)})
    flower.aggregate_train(1, flower_replies)
    clipped = [float(np.abs(r.content["arrays"]["w"].numpy()).sum()) for r in flower_replies]
    assert clipped == pytest.approx([0.05, 0.5, 1.0, 1.0], rel=1e-6)
    mean = float(new["w"].numpy()[0])  # ours: sum of the same clipped updates / (q N), noise ~ 1e-6
    assert mean == pytest.approx(sum(clipped) / 4, abs=1e-4)
    # and the norm moves towards the median: 2 of 4 unclipped at gamma = 0.5 leaves it (count noise 1e-3)
    assert metrics["next-clipping-norm"] == pytest.approx(1.0, rel=1e-3)


def test_a_run_accounts_the_total_multiplier_and_adapts_its_norm(tmp_path, small_scenario):
    settings = {"privacy.mode": "client-dp-adaptive", "privacy.noise_multiplier": 0.8, "privacy.q": 0.6,
                "privacy.clipped_count_stddev": 4.0, "privacy.clipping_norm": 0.05, "run.rounds": 4}
    result = fedsim.run(small_scenario(**settings), out=tmp_path / "run")
    assert result.summary["privacy"]["epsilon"] == pytest.approx(epsilon_of([(0.8, 0.6, 4)], 1e-5))
    assert result.summary["privacy"]["mode"] == "client-dp-adaptive"
    used = [row["train"]["clipping-norm"] for row in result.metrics]
    assert used[0] == 0.05 and used[-1] > 0.05  # updates far above 0.05: the norm grows towards their median
    assert math.isfinite(result.final["loss"])


def test_the_adapted_norm_is_checkpointed():
    s = strategy(clipping_norm=0.3)
    state = object_state(s)
    s.clipping_norm = 9.0
    restore_object(s, state)
    assert s.clipping_norm == 0.3


def test_a_count_noise_that_leaves_no_noise_for_the_updates_is_refused(small_scenario):
    from fedsim.server import prepare

    scenario = small_scenario(**{"privacy.mode": "client-dp-adaptive", "privacy.noise_multiplier": 1.0,
                                 "privacy.q": 0.6})  # default sigma_b = q N / 20 = 0.15 < z
    with pytest.raises(ScenarioError, match=r"privacy.clipped_count_stddev: 0.15 leaves no noise for the updates"):
        prepare(scenario)
