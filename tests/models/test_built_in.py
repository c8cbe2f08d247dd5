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


# published parameter counts: torchvision's ResNets (ImageNet stem, 1000 classes), LEAF's FEMNIST CNN; the CIFAR
# ResNet-18 of SalUn and the FL literature (3x3 stem, 10 classes)
@pytest.mark.parametrize(("name", "shape", "classes", "settings", "count"), [
    ("resnet18", (3, 32, 32), 10, {}, 11_173_962),
    ("resnet18", (3, 224, 224), 1000, {"stem": "imagenet"}, 11_689_512),
    ("resnet34", (3, 224, 224), 1000, {"stem": "imagenet"}, 21_797_672),
    ("resnet50", (3, 224, 224), 1000, {"stem": "imagenet"}, 25_557_032),
    ("resnet18", (3, 32, 32), 10, {"norm": "group"}, 11_173_962),  # GroupNorm: as many parameters as BatchNorm
    ("femnist-cnn", (1, 28, 28), 62, {}, 6_603_710),
    ("char-lstm", (80,), 80, {}, 819_920),  # LEAF's 817,872 + one more bias vector per gate and layer (PyTorch)
])
def test_parameter_counts_are_the_published_ones(name, shape, classes, settings, count):
    model = build_model(ModelSection(name=name, **settings), SourceInfo(shape, classes))
    assert sum(p.numel() for p in model.parameters()) == count


def test_resnet_stems_norms_and_shapes():
    cifar = build_model(ModelSection(name="resnet18", norm="group"), SourceInfo((3, 32, 32), 10))
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in cifar.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in cifar.modules())
    assert cifar(torch.zeros(2, 3 * 32 * 32)).shape == (2, 10)  # flat batches, as fedsim keeps data
    imagenet = build_model(ModelSection(name="resnet50", stem="imagenet"), SourceInfo((1, 64, 64), 2))
    assert imagenet(torch.zeros(2, 1, 64, 64)).shape == (2, 2)  # one grey channel: the stem takes it
    bare = build_model(ModelSection(name="resnet18", norm="none"), SourceInfo((3, 32, 32), 10))
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)) for m in bare.modules())


def test_the_character_lstm_predicts_the_next_character_from_indices():
    from fedsim.models.leaf import SEQUENCE, VOCABULARY

    assert len(VOCABULARY) == 80 and len(set(VOCABULARY)) == 80
    model = build_model(ModelSection(name="char-lstm"), SourceInfo((SEQUENCE,), len(VOCABULARY)))
    x = torch.randint(0, len(VOCABULARY), (3, SEQUENCE)).float()  # indices, stored as numbers like every feature
    assert model(x).shape == (3, len(VOCABULARY))


@pytest.mark.parametrize(("settings", "message"), [
    ({"name": "mlp", "stem": "cifar"}, "applies to the ResNets only"),
    ({"name": "cnn", "factory": "m:f"}, "both name the model"),
    ({"args": {"width": 3}}, "model.args are a factory's keyword arguments"),
])
def test_model_settings_that_mean_nothing_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        ModelSection(**settings)
