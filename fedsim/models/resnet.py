"""ResNet-18 / 34 / 50 (He et al. 2016, "Deep Residual Learning for Image Recognition"), written for fedsim.

The blocks and widths are the paper's (and torchvision's: the same layers, names aside, so the same parameter
counts; the bottleneck's stride sits on its 3x3 convolution, as in torchvision's "v1.5"). Two choices the FL
literature varies are settings:

- `stem`: "imagenet" is the paper's 7x7 stride-2 convolution and 3x3 max-pool (for 224-pixel images); "cifar" is
  one 3x3 stride-1 convolution and no pool (for 32-pixel images: the ResNet-18 SalUn and most FL papers train on
  CIFAR-10, 11,173,962 parameters with 10 classes).
- `norm`: "batch" (BatchNorm2d, the paper's), "group" (GroupNorm with 32 groups, or fewer where a layer has fewer
  channels: Wu & He 2018; what federated and DP training use, since it keeps no running statistics) or "none".

Parameter counts with 1000 classes and the ImageNet stem (torchvision's): ResNet-18 11,689,512, ResNet-34
21,797,672, ResNet-50 25,557,032 (GroupNorm has the same count as BatchNorm; "none" drops the norms' parameters).
"""

from __future__ import annotations

import torch
from torch import nn

DEPTHS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3]),
          "resnet50": ("bottleneck", [3, 4, 6, 3])}
STEMS = ("cifar", "imagenet")
NORMS = ("batch", "group", "none")
GROUPS = 32


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(GROUPS, channels), channels)
    return nn.Identity()


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int, norm: str) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1, self.bn1 = conv3x3(c_in, width, stride), norm_layer(norm, width)
        self.conv2, self.bn2 = conv3x3(width, c_out), norm_layer(norm, c_out)
        self.relu = nn.ReLU()
        self.shortcut = projection(c_in, c_out, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, and an identity (or projection) shortcut."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int, norm: str) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1, self.bn1 = conv1x1(c_in, width), norm_layer(norm, width)
        self.conv2, self.bn2 = conv3x3(width, width, stride), norm_layer(norm, width)
        self.conv3, self.bn3 = conv1x1(width, c_out), norm_layer(norm, c_out)
        self.relu = nn.ReLU()
        self.shortcut = projection(c_in, c_out, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def projection(c_in: int, c_out: int, stride: int, norm: str) -> nn.Module:
    """The shortcut: identity where shapes match, else a strided 1x1 convolution and a norm."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(conv1x1(c_in, c_out, stride), norm_layer(norm, c_out))


class ResNet(nn.Module):
    """A stem, four stages of residual blocks (64, 128, 256, 512 wide; stages 2-4 halve the resolution),
    global average pooling and a linear head. Inputs may be flat (they are reshaped to `input_shape`)."""

    def __init__(self, depth: str, input_shape: tuple[int, int, int], outputs: int, stem: str = "cifar",
                 norm: str = "batch") -> None:
        super().__init__()
        kind, blocks = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.input_shape = tuple(input_shape)
        channels = input_shape[0]
        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False),
                                      norm_layer(norm, 64), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1))
        else:
            self.stem = nn.Sequential(conv3x3(channels, 64), norm_layer(norm, 64), nn.ReLU())
        stages, c_in = [], 64
        for i, count in enumerate(blocks):
            width = 64 * 2**i
            layers = []
            for j in range(count):
                layers.append(block(c_in, width, 2 if i > 0 and j == 0 else 1, norm))
                c_in = width * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, outputs)
        for m in self.modules():  # the paper's (and torchvision's) initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x.view(-1, *self.input_shape)))
        return self.head(self.pool(x).flatten(1))
