"""The vectorised cohort engine (fedsim.stacked) against the sequential one: the same clients trained one by one
with `train_locally` (the goldens pin that path) end where the vectorised run ends, up to float rounding.

Both are the same algorithm, so the tests run in float64 (the `float64` fixture: models, data, whole runs), where
the two must agree to float64 rounding over the steps taken (tests/golden.py's tolerance with u = 2^-53). In
float32 a rounding difference can flip a near-tie (a ReLU at 0, a max-pool's pick) and move a CNN run by 1e-4."""

from __future__ import annotations

import copy

import pytest
import torch
from golden import ENGINE_SCENARIOS, FLOAT64_ROUNDOFF, assert_runs_match, relative, run_both, tolerance
from torch import nn

import fedsim
from fedsim.activations import activations_per_example
from fedsim.errors import ScenarioError
from fedsim.models import ConvNet, SmallCNN
from fedsim.protocol import LocalTraining
from fedsim.server import prepare
from fedsim.stacked import (
    CPU_STEP_ACTIVATIONS,
    bytes_per_client,
    chunk_size,
    laid_out_like,
    pays_off,
    train_stacked,
    unsupported_model,
)
from fedsim.training import train_locally

SIZES = [0, 1, 7, 16, 17, 40, 33]  # empty, smaller than a batch, uneven last batches, different step counts


def one_by_one(model, data, cfg, task, seeds):
    out = []
    for (x, y), seed in zip(data, seeds):
        local = copy.deepcopy(model)
        metrics = train_locally(local, x, y, cfg, task, torch.Generator().manual_seed(seed))
        out.append((local.state_dict(), metrics))
    return out


def assert_cohort_matches(model, cfg, task, features=12, classes=4, memory_mb=1024.0):
    assert next(model.parameters()).dtype == torch.float64  # built under the float64 fixture
    torch.manual_seed(0)
    data = [(torch.randn(n, features), torch.randint(0, classes, (n,)) if task == "classification" else torch.randn(n))
            for n in SIZES]
    seeds = [100 + i for i in range(len(SIZES))]
    expected = one_by_one(model, data, cfg, task, seeds)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = train_stacked(model, data, cfg, task, [torch.Generator().manual_seed(s) for s in seeds], memory_mb).clients()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the received model is untouched
    rel_tol = tolerance(max(r.stats.steps for r in got), FLOAT64_ROUNDOFF)
    for (state, metrics), result in zip(expected, got):
        for name, tensor in state.items():
            assert relative(result.state[name], tensor) <= rel_tol, name
        vectorised = result.stats.metrics(accuracy=task == "classification")
        assert vectorised.keys() == metrics.keys()
        for key in metrics:
            assert vectorised[key] == pytest.approx(metrics[key], rel=rel_tol, abs=1e-12)
    # an empty partition takes no step and keeps the received model, as one by one
    assert all(torch.equal(got[0].state[k], before[k]) for k in before)


def mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.parametrize("cfg", [
    LocalTraining(local_epochs=2, batch_size=8, lr=0.1),
    LocalTraining(local_epochs=2, batch_size=8, lr=0.1, momentum=0.9, weight_decay=1e-3),
    LocalTraining(local_epochs=3, batch_size=8, lr=0.01, optimizer="adam", weight_decay=1e-3),
    LocalTraining(local_epochs=2, batch_size=8, lr=0.1, proximal_mu=0.5),
    LocalTraining(local_epochs=2, batch_size=8, lr=0.1, loss="fedld-margin", margin_lambda=0.3),
    LocalTraining(local_epochs=2, batch_size=8, lr=0.1, loss="fedld-margin", margin_reduction="mean"),
], ids=["sgd", "momentum-wd", "adam-wd", "proximal", "margin-batch", "margin-mean"])
def test_cohort_equals_training_one_by_one(cfg, float64):
    assert_cohort_matches(mlp(), cfg, "classification")


def test_cohort_regression_and_cnn(float64):
    torch.manual_seed(2)
    assert_cohort_matches(nn.Linear(12, 1), LocalTraining(local_epochs=2, batch_size=8, lr=0.05), "regression")
    assert_cohort_matches(SmallCNN((1, 4, 4), [4, 8], 5), LocalTraining(batch_size=8, lr=0.05, momentum=0.9),
                          "classification", features=16, classes=5)


def test_memory_budget_splits_the_cohort_into_chunks_with_the_same_results(float64):
    model, cfg = mlp(), LocalTraining(local_epochs=2, batch_size=8, lr=0.1, momentum=0.9)
    per_client = bytes_per_client(model, torch.randn(1, 12), cfg)
    budget = 2.5 * per_client / 2**20  # two clients a chunk
    assert chunk_size(model, torch.randn(1, 12), cfg, budget) == 2
    assert_cohort_matches(model, cfg, "classification", memory_mb=budget)


def test_a_clients_copy_is_laid_out_as_its_gradient_and_holds_its_values():
    transposed = torch.randn(5, 4, 3).transpose(1, 2)  # a vmapped linear weight's gradient: (5, 3, 4), rows (1, 3)
    for gradient in (transposed, torch.randn(5, 3, 4), torch.randn(5, 4), torch.randn(5, 2, 3, 4).permute(0, 3, 1, 2)):
        copy_ = laid_out_like(gradient, 7).copy_(torch.arange(gradient[0].numel()).view(gradient.shape[1:]))
        assert copy_.shape == (7, *gradient.shape[1:]) and copy_.stride()[1:] == gradient.stride()[1:]
        assert torch.equal(copy_[6], torch.arange(gradient[0].numel()).view(gradient.shape[1:]).to(copy_.dtype))


def test_models_with_running_statistics_are_not_vectorised():
    assert unsupported_model(mlp()) is None
    reason = unsupported_model(SmallCNN((1, 4, 4), [4], 3, batch_norm=True))
    assert "BatchNorm2d" in reason
    assert "Dropout draws its masks" in unsupported_model(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1)))


@pytest.mark.parametrize("name", [n if n != "bench-w3" else pytest.param(n, marks=pytest.mark.slow)  # ~4 s
                                  for n in ENGINE_SCENARIOS])
def test_vectorised_runs_equal_sequential_runs(name, tmp_path, monkeypatch, float64):
    monkeypatch.chdir(tmp_path)
    assert_runs_match(*run_both(name))


def test_vectorised_with_faults_and_forgetting_equals_sequential(tmp_path, monkeypatch, float64):
    monkeypatch.chdir(tmp_path)
    faults = ["faults.dropout_rate=0.2", "faults.failure_rate=0.2", "faults.straggler_rate=0.2",
              "faults.straggler_delay_s=5.0"]
    assert_runs_match(*run_both("quickstart", faults))
    assert_runs_match(*run_both("unlearn-client"))  # retained data after forgetting; unlearning steps one by one


def test_vectorize_true_on_what_cannot_be_vectorised_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ScenarioError, match=r"run.vectorize: true, but training on bags' aggregate responses"):
        fedsim.run(fedsim.Scenario.load("aggregate-labels", ["run.vectorize=true"]), out=None)
    with pytest.raises(ScenarioError, match=r"run.vectorize: true, but BatchNorm2d keeps running statistics"):
        fedsim.run(fedsim.Scenario.load("bench-w3", ["run.vectorize=true", "model.batch_norm=true"]), out=None)
    auto = fedsim.run(fedsim.Scenario.load("bench-w3", ["run.rounds=1", "model.batch_norm=true",
                                                        "run.vectorize='auto'"]), out=None)
    assert auto.summary["runtime"]["vectorized_clients"] == 0  # auto: one by one, quietly


def test_auto_vectorises_where_it_pays_off():
    def decided(name: str, *overrides: str) -> bool:
        return prepare(fedsim.Scenario.load(name, list(overrides))).vectorize

    small_w4 = "data.generator.n_samples=1100"
    assert decided("bench-w3")  # a small CNN step: faster together on a CPU
    assert not decided("bench-w4", small_w4)  # compute-bound on a CPU (~2M activations a step): one by one
    assert decided("bench-w4", small_w4, "run.vectorize=true")
    assert not decided("bench-w3", "run.vectorize=false")
    model, sample = ConvNet((3, 32, 32), [32, 64], [128], 10), torch.randn(1, 3, 32, 32)
    assert activations_per_example(model, sample) * 10 > CPU_STEP_ACTIVATIONS
    assert pays_off(model, sample, 10, "cuda") and not pays_off(model, sample, 10, "cpu")


def test_a_models_activations_are_counted_once_per_input_shape():
    """chunk_size asks every round: one forward pass per (model, input shape), the same count after."""
    model = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    first = activations_per_example(model, torch.randn(4, 12))
    assert first == 8 + 8 + 3 + 3 and activations_per_example(model, torch.randn(9, 12)) == first
    assert len(calls) == 1


@pytest.mark.parametrize("epochs", [1, 3])
def test_the_schedule_holds_each_clients_sequential_batches(epochs):
    """Client c's real rows at its steps are the batches `minibatches` draws from the same generator, offset into
    the concatenated data; a client whose batches have run out has none (sizes uneven, one client empty)."""
    from fedsim.stacked import schedule
    from fedsim.training import minibatches

    sizes, cfg = [14, 0, 5, 40, 17], LocalTraining(lr=0.1, batch_size=16, local_epochs=epochs)
    plan = schedule(sizes, cfg, [torch.Generator().manual_seed(c) for c in range(len(sizes))])
    offsets = [sum(sizes[:c]) for c in range(len(sizes))]
    for c, n in enumerate(sizes):
        expected = list(minibatches(n, 16, epochs, torch.Generator().manual_seed(c)))
        drawn = [plan.rows[t, c][plan.mask[t, c].bool()] - offsets[c] for t in range(plan.rows.shape[0])
                 if plan.counts[t, c] > 0]
        assert len(drawn) == len(expected) and all(torch.equal(a, b) for a, b in zip(drawn, expected))
