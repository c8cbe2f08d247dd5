"""Model factories by name: linear/logistic, MLP, small CNN; sizes inferred from the dataset."""

from __future__ import annotations

import math

import torch
from torch import nn

from fedsim.scenario import ModelSection
from fedsim.sources import SourceInfo


class SmallCNN(nn.Module):
    """Conv(3x3)-[BatchNorm]-ReLU-MaxPool blocks then a linear head; input is flat and reshaped to (C, H, W)."""

    def __init__(self, input_shape: tuple[int, int, int], channels: list[int], outputs: int,
                 batch_norm: bool = False) -> None:
        super().__init__()
        self.input_shape = input_shape
        layers: list[nn.Module] = []
        c, h, w = input_shape
        for out in channels:
            norm = [nn.BatchNorm2d(out)] if batch_norm else []
            layers += [nn.Conv2d(c, out, 3, padding=1), *norm, nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            c, h, w = out, math.ceil(h / 2), math.ceil(w / 2)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c * h * w, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x.view(-1, *self.input_shape))
        return self.head(x.flatten(1))


class ConvNet(nn.Module):
    """Valid 3x3 convolutions with ReLU, one 2x2 max-pool, dense ReLU layers, a linear head (pfl-research's
    CIFAR-10 CNN with channels [32, 64] and hidden [128], ~1.6M parameters, without its dropout)."""

    def __init__(self, input_shape: tuple[int, int, int], channels: list[int], hidden: list[int],
                 outputs: int) -> None:
        super().__init__()
        self.input_shape = input_shape
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for out in channels:
            layers += [nn.Conv2d(c, out, 3), nn.ReLU()]
            c, h, w = out, h - 2, w - 2
        self.features = nn.Sequential(*layers, nn.MaxPool2d(2), nn.Flatten())
        width = c * (h // 2) * (w // 2)
        dense: list[nn.Module] = []
        for size in hidden:
            dense += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.head = nn.Sequential(*dense, nn.Linear(width, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, *self.input_shape)))


def build_model(cfg: ModelSection, info: SourceInfo) -> nn.Module:
    """A fresh model for `info`'s inputs; one output per class, or one for regression."""
    inputs = math.prod(info.input_shape)
    outputs = info.num_classes or 1
    if cfg.name == "linear":
        return nn.Linear(inputs, outputs)
    if cfg.name == "mlp":
        layers: list[nn.Module] = []
        width = inputs
        for hidden in cfg.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        return nn.Sequential(*layers, nn.Linear(width, outputs))
    if len(info.input_shape) != 3:
        from fedsim.errors import ScenarioError

        raise ScenarioError("model.name", f"'{cfg.name}' needs image inputs but the data has shape "
                            f"{info.input_shape}", "use model.name = 'mlp' or 'linear'")
    if cfg.name == "convnet":
        return ConvNet(info.input_shape, cfg.channels, cfg.hidden, outputs)
    return SmallCNN(info.input_shape, cfg.channels, outputs, cfg.batch_norm)


def initial_model(cfg: ModelSection, info: SourceInfo, seed: int) -> nn.Module:
    """The run's initial global model, seeded so every runtime starts from the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg, info)
