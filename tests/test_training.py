"""One local-optimisation loop (fedsim.training.train_loop) for every trainer, with the optimizer LocalTraining
names: plain training, bags, DP-SGD, unlearning steps and the relearn metric all go through it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from fedsim.errors import FedsimError
from fedsim.evaluation import measured_loss, task_loss
from fedsim.protocol import LocalTraining
from fedsim.training import minibatches
from fedsim.unlearning.methods.gradient_ascent import gradient_ascent

ROOT = Path(__file__).resolve().parents[1]


def test_only_the_training_loop_builds_or_steps_an_optimizer():
    pattern = re.compile(r"torch\.optim\.(SGD|Adam\w*)\(|\.step\(\)|\.backward\(\)|autograd\.grad\(|[^.\w]grad\(")
    found = []
    for folder in ("fedsim", "clients", "strategies"):
        for path in (ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line) and path.name != "training.py":
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    # the exceptions: SalUn's saliency is a gradient (a backward pass, no step), not an optimisation loop; the
    # vectorised engine (fedsim/stacked.py) is train_locally for a stack of clients, held to it by
    # tests/test_stacked.py,
    # and its DP-SGD twin (fedsim/stacked_dp_sgd.py, torch.func.grad per example) is held to Opacus by
    # test_stacked_dp_sgd.py
    found.sort()
    assert len(found) == 3, found
    assert found[0].startswith("fedsim/stacked.py") and "autograd.grad(" in found[0], found
    assert found[1].startswith("fedsim/stacked_dp_sgd.py") and "vmap(grad(" in found[1], found
    assert found[2].startswith("fedsim/unlearning/methods/salun.py") and found[2].endswith(".backward()"), found


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_gradient_ascent_honours_adam():
    x, y = torch.randn(40, 4, generator=torch.Generator().manual_seed(1)), torch.arange(40) % 3
    cfg = LocalTraining(optimizer="adam", lr=0.01, batch_size=8, local_epochs=2, weight_decay=1e-3)
    model = _model()
    gradient_ascent(model, x, y, cfg, "classification", torch.Generator().manual_seed(2))

    reference = _model()  # a hand-written Adam ascent over the same batches
    optimizer = torch.optim.Adam(reference.parameters(), lr=0.01, weight_decay=1e-3)
    for idx in minibatches(40, 8, 2, torch.Generator().manual_seed(2)):
        optimizer.zero_grad()
        (-task_loss("classification", reference(x[idx]), y[idx])).backward()
        optimizer.step()
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want)
    sgd = _model()
    gradient_ascent(sgd, x, y, LocalTraining(lr=0.01, batch_size=8, local_epochs=2), "classification",
                    torch.Generator().manual_seed(2))
    assert not torch.allclose(next(sgd.parameters()), next(model.parameters()))


@pytest.mark.parametrize(("overrides", "field"), [
    ({"client.proximal_mu": 0.1}, "client.proximal_mu"),
    ({"strategy.name": "fedprox", "strategy.proximal_mu": 0.5}, "client.proximal_mu"),
    ({"client.loss": "fedld-margin"}, "client.loss"),
])
def test_dp_sgd_refuses_loss_terms_opacus_would_drop(overrides, field, small_scenario):
    from fedsim.server import prepare

    scenario = small_scenario(privacy__mode="dp-sgd", privacy__noise_multiplier=1.0).with_overrides(overrides)
    with pytest.raises(FedsimError, match=f"^{re.escape(field)}: DP-SGD cannot train"):
        prepare(scenario)


@pytest.mark.parametrize("shape", [(4096, 10), (7, 3), (0, 10), (5, 2, 4)])
def test_measured_loss_is_the_training_loss(shape):
    torch.manual_seed(0)
    outputs = torch.randn(*shape) * 5
    targets = torch.randint(0, shape[1], (shape[0], *shape[2:]))
    expected = task_loss("classification", outputs, targets).item()
    assert measured_loss("classification", outputs, targets) == pytest.approx(expected, rel=1e-6, nan_ok=True)
    outputs, y = torch.randn(7, 1), torch.randn(7)
    assert measured_loss("regression", outputs, y) == task_loss("regression", outputs, y).item()


def test_counting_activations_leaves_running_statistics_alone():
    from fedsim.activations import activations_per_example

    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert activations_per_example(model, torch.randn(3, 4) * 10) == 6 + 6 + 6  # each module, the Sequential too
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_cpu_evaluation_batch_bounds_its_activations():
    from fedsim.evaluation import CPU_BATCH_ACTIVATIONS, LARGE_BATCH, batch_size_for, evaluate

    wide = nn.Sequential(nn.Linear(8, 2**16), nn.ReLU(), nn.Linear(2**16, 3))  # ~131k activations an example
    x, y = torch.randn(300, 8), torch.randint(0, 3, (300,))
    size = batch_size_for(wide, x)
    assert size == CPU_BATCH_ACTIVATIONS // (2**16 + 2**16 + 3 + 3) and size < len(x)  # the Sequential counts too
    assert batch_size_for(nn.Linear(8, 3), x) == LARGE_BATCH
    assert evaluate(wide, x, y, "classification") == pytest.approx(evaluate(wide, x, y, "classification", 300))
