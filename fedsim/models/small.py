"""fedsim's first built-in models: linear / logistic, an MLP, a small CNN and pfl-research's CIFAR-10 ConvNet.

Each takes flat inputs (a batch of `prod(input_shape)` features) and, for images, reshapes them to (C, H, W).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def linear(inputs: int, outputs: int) -> nn.Module:
    """Linear regression / multinomial logistic regression."""
    return nn.Linear(inputs, outputs)


def mlp(inputs: int, hidden: list[int], outputs: int) -> nn.Module:
    """Dense ReLU layers of widths `hidden`, then a linear head."""
    layers: list[nn.Module] = []
    width = inputs
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    return nn.Sequential(*layers, nn.Linear(width, outputs))


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
