"""Models by name, with input and output sizes inferred from the data."""

from __future__ import annotations

import pytest
import torch

from fedsim.errors import ScenarioError
from fedsim.models import build_model, initial_model
from fedsim.scenario import ModelSection
from fedsim.sources import SourceInfo

DIGITS = SourceInfo((1, 8, 8), 10)


@pytest.mark.parametrize("name", ["linear", "mlp", "cnn"])
def test_shapes(name):
    model = build_model(ModelSection(name=name, hidden=[32, 16], channels=[4, 8]), DIGITS)
    assert model(torch.zeros(5, 64)).shape == (5, 10)
    regression = build_model(ModelSection(name="mlp"), SourceInfo((7,), 0))
    assert regression(torch.zeros(3, 7)).shape == (3, 1)


def test_mlp_layers_follow_hidden():
    model = build_model(ModelSection(name="mlp", hidden=[32, 16]), DIGITS)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(64, 32), (32, 16), (16, 10)]


def test_initial_model_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = initial_model(ModelSection(), DIGITS, 4).state_dict()
    assert torch.equal(torch.rand(1), before)
    b = initial_model(ModelSection(), DIGITS, 4).state_dict()
    c = initial_model(ModelSection(), DIGITS, 5).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)


def test_cnn_needs_images():
    with pytest.raises(ScenarioError, match="needs image inputs"):
        build_model(ModelSection(name="cnn"), SourceInfo((13,), 3))
