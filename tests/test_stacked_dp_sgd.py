"""Vectorised DP-SGD (fedsim.stacked_dp_sgd) against Opacus one client at a time (fedsim.features.dp_sgd): the same
seeds give the same Poisson batches and noise, so each client ends where its Opacus run ends, up to float
rounding; whole DP-SGD runs give the sequential engine's metrics and privacy ledger."""

from __future__ import annotations

import copy

import pytest
import torch
from golden import FLOAT64_ROUNDOFF, assert_runs_match, relative, run_both, tolerance
from torch import nn

from fedsim.features.dp_sgd import DPSGDSettings, round_plan, train_dp_sgd
from fedsim.models import SmallCNN
from fedsim.protocol import LocalTraining
from fedsim.stacked_dp_sgd import PrivateClient, train_stacked_dp_sgd

SIZES = [1, 7, 16, 17, 40, 33]  # smaller than a batch, uneven Poisson batch counts (1 / q = ceil(n / batch))


def privacy(noise: float) -> DPSGDSettings:
    return DPSGDSettings(delta=1e-5, accountant="rdp", max_grad_norm=0.7, planned_rounds=1, noise_multiplier=noise)


def assert_dp_cohort_matches(model, cfg, noises, features=12, classes=4, memory_mb=1024.0):
    assert next(model.parameters()).dtype == torch.float64  # built under the float64 fixture
    torch.manual_seed(0)
    data = [(torch.randn(n, features), torch.randint(0, classes, (n,))) for n in SIZES]
    seeds = [200 + i for i in range(len(SIZES))]
    clients = [PrivateClient(x, y, torch.Generator().manual_seed(seed), round_plan(len(x), cfg)[1] // cfg.local_epochs,
                             noise) for (x, y), seed, noise in zip(data, seeds, noises)]
    got = train_stacked_dp_sgd(model, clients, cfg, "classification", 0.7, memory_mb).clients()
    for (x, y), seed, noise, result in zip(data, seeds, noises, got):
        local = copy.deepcopy(model)
        metrics, history = train_dp_sgd(local, x, y, cfg, "classification", seed, noise, privacy(noise), [])
        rel_tol = tolerance(result.stats.steps, FLOAT64_ROUNDOFF)
        for name, tensor in local.state_dict().items():
            assert relative(result.state[name], tensor) <= rel_tol, (len(x), name)
        assert result.stats.steps == history[-1][2] == metrics["steps"]
        assert result.stats.metrics()["loss"] == pytest.approx(metrics["loss"], rel=rel_tol, abs=1e-12)


def mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")  # Opacus's epsilon for sigma = 0 (inf)
@pytest.mark.parametrize("cfg", [
    LocalTraining(local_epochs=2, batch_size=8, lr=0.1),
    LocalTraining(local_epochs=2, batch_size=8, lr=0.1, momentum=0.9, weight_decay=1e-3),
    LocalTraining(local_epochs=3, batch_size=8, lr=0.01, optimizer="adam"),
], ids=["sgd", "momentum-wd", "adam"])
def test_dp_cohort_equals_opacus_one_by_one(cfg, float64):
    assert_dp_cohort_matches(mlp(), cfg, [1.1, 0.8, 1.1, 2.0, 0.0, 1.1])  # sigma 0: Opacus draws no noise


def test_dp_cohort_cnn_and_memory_chunks(float64):
    model = SmallCNN((1, 4, 4), [4, 8], 5)
    cfg = LocalTraining(batch_size=8, lr=0.05, momentum=0.9)
    assert_dp_cohort_matches(model, cfg, [1.0] * len(SIZES), features=16, classes=5, memory_mb=0.05)


def test_a_dp_sgd_run_vectorised_equals_the_sequential_run(float64):
    assert_runs_match(*run_both("dp-sgd"))  # weights, and every metric: loss, epsilon, steps, the privacy ledger
