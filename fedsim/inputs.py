"""The input pipeline of image data: stored examples (flat; uint8 pixels) to the model's inputs, per batch.

fedsim keeps images as uint8, flat, decoded once; every batch a model sees goes through an `InputPipeline`:
decode (to float in [0, 1], shaped (C, H, W), grey broadcast to the model's channels), then the scenario's
transforms in order. The pipeline is a forward pre-hook on the model, so every raw batch (uint8, or flat) gets the
deterministic *test* transforms wherever it is fed (evaluation, unlearning steps, metrics); the training loops
(fedsim.training, fedsim.stacked, DP-SGD) call `augment` first, which applies the *train* transforms, random ones
drawn from the client's own augmentation generator, seeded by (seed, round, client): runs are reproducible and a
client's augmentation does not depend on the runtime or on the clients trained with it.

Every geometric op works on the whole batch at once with per-example parameters (random crops by gathering,
resized crops and rotations by one `grid_sample`), which is what lets a vectorised round augment its stacked
batch exactly as each client would alone. Differences from torchvision's transforms, by design: the resized crop
is bilinear without antialiasing (torchvision antialiases when it shrinks), rotation is nearest-neighbour with
zero fill (torchvision's default).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.seeding import derive_seed

RANDOM = ("random_crop", "random_resized_crop", "random_rotation", "horizontal_flip")
AUGMENTATION = 0xA06  # the stream a client's augmentation draws come from (fedsim.seeding.derive_seed)


@dataclass(frozen=True)
class Op:
    """One transform: its kind and settings (fedsim.scenario's [[data.transforms]] entry)."""

    kind: str
    size: tuple[int, ...] = ()
    padding: int = 0
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    degrees: float = 0.0
    p: float = 0.5
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return getattr(self, "_" + self.kind)(x, generator)

    def _hw(self) -> tuple[int, int]:
        return (self.size[0], self.size[0]) if len(self.size) == 1 else (self.size[0], self.size[1])

    def _resize(self, x: torch.Tensor, _) -> torch.Tensor:
        h, w = x.shape[-2:]
        if len(self.size) == 1:  # the shorter side becomes size, the aspect ratio stays (torchvision's Resize)
            short, long = (h, w) if h <= w else (w, h)
            new_long = int(self.size[0] * long / short)
            target = (self.size[0], new_long) if h <= w else (new_long, self.size[0])
        else:
            target = self._hw()
        if tuple(target) == (h, w):
            return x
        return F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=True)

    def _center_crop(self, x: torch.Tensor, _) -> torch.Tensor:
        th, tw = self._hw()
        h, w = x.shape[-2:]
        if th > h or tw > w:  # torchvision pads a too-small image with zeros first
            ph, pw = max(th - h, 0), max(tw - w, 0)
            x = F.pad(x, (pw // 2, (pw + 1) // 2, ph // 2, (ph + 1) // 2))
            h, w = x.shape[-2:]
        top, left = round((h - th) / 2.0), round((w - tw) / 2.0)
        return x[..., top : top + th, left : left + tw]

    def _random_crop(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        th, tw = self._hw()
        if self.padding:
            x = F.pad(x, (self.padding,) * 4)
        n, _, h, w = x.shape
        top = torch.randint(0, h - th + 1, (n,), generator=g)
        left = torch.randint(0, w - tw + 1, (n,), generator=g)
        return crop(x, top, left, th, tw)

    def _random_resized_crop(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        return resized_crop(x, *resized_crop_boxes(n, h, w, self.scale, self.ratio, g), self._hw())

    def _random_rotation(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        angles = (torch.rand(x.shape[0], generator=g, dtype=torch.float64) * 2 - 1) * self.degrees
        return rotate(x, angles)

    def _horizontal_flip(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return flip(x, torch.rand(x.shape[0], generator=g) < self.p)

    def _normalize(self, x: torch.Tensor, _) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def crop(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Example i's h x w window at (top[i], left[i])."""
    rows = (top[:, None] + torch.arange(h)).to(x.device)
    cols = (left[:, None] + torch.arange(w)).to(x.device)
    batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def resized_crop(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, ch: torch.Tensor, cw: torch.Tensor,
                 size: tuple[int, int]) -> torch.Tensor:
    """Example i's ch[i] x cw[i] window at (top[i], left[i]), resized bilinearly to `size`: crop, then
    F.interpolate(align_corners=False) without antialiasing, for every example in one grid_sample."""
    _, _, h, w = x.shape

    def axis(start: torch.Tensor, length: torch.Tensor, out: int, full: int) -> torch.Tensor:
        # output pixel k samples the window at (k + 0.5) * length / out - 0.5, clamped into the window
        at = (torch.arange(out, dtype=torch.float64) + 0.5) * (length[:, None] / out) - 0.5
        at = start[:, None] + torch.minimum(at.clamp(min=0), length[:, None] - 1)
        return (2 * at + 1) / full - 1  # grid_sample's coordinates (align_corners=False)

    ys, xs = axis(top.double(), ch.double(), size[0], h), axis(left.double(), cw.double(), size[1], w)
    grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)
    return F.grid_sample(x, grid.to(x.dtype).to(x.device), mode="bilinear", padding_mode="border",
                         align_corners=False)


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Example i rotated by degrees[i] counter-clockwise about its centre (torchvision's rotate: nearest pixel,
    zero fill, same size)."""
    n, c, h, w = x.shape
    angle = degrees.to(torch.float64) * (math.pi / 180)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin * h / w, sin * w / h, cos
    grid = F.affine_grid(theta.to(x.dtype).to(x.device), [n, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def flip(x: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Examples where `which` is true mirrored left to right."""
    return torch.where(which.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


def resized_crop_boxes(n: int, h: int, w: int, scale: Sequence[float], ratio: Sequence[float],
                       g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(top, left, height, width) of n crops as torchvision's RandomResizedCrop picks one: up to 10 tries of an
    area fraction ~ U(scale) and a log-uniform aspect ratio, the first that fits, else a centre crop of the
    clamped ratio."""
    tries = 10
    area = h * w * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=g, dtype=torch.float64))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, tries, generator=g, dtype=torch.float64))
    cw, ch = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = fits.float().argmax(1)
    found = fits.any(1)
    pick = torch.arange(n)
    cw, ch = cw[pick, first], ch[pick, first]
    in_ratio = w / h
    if in_ratio < min(ratio):
        fw, fh = w, round(w / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(h * max(ratio)), h
    else:
        fw, fh = w, h
    cw, ch = torch.where(found, cw, float(fw)), torch.where(found, ch, float(fh))
    u, v = torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64)
    top = torch.where(found, torch.floor(u * (h - ch + 1)), torch.tensor((h - fh) // 2, dtype=torch.float64))
    left = torch.where(found, torch.floor(v * (w - cw + 1)), torch.tensor((w - fw) // 2, dtype=torch.float64))
    return top, left, ch, cw


class InputPipeline:
    """Stored examples -> model inputs: decode, then `train_ops` (training) or `test_ops` (everything else).
    Registered as a forward pre-hook, it turns any raw batch (uint8 or flat) into the test-time input."""

    def __init__(self, stored_shape: Sequence[int], channels: int, train_ops: Sequence[Op],
                 test_ops: Sequence[Op]) -> None:
        self.stored_shape, self.channels = tuple(stored_shape), channels
        self.train_ops, self.test_ops = tuple(train_ops), tuple(test_ops)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        images = x.view(-1, *self.stored_shape)
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if images.shape[1] != self.channels:  # grey images for a colour model: one channel, repeated
            images = images.expand(-1, self.channels, -1, -1)
        return images

    def test(self, x: torch.Tensor) -> torch.Tensor:
        x = self.decode(x)
        for op in self.test_ops:
            x = op(x, None)
        return x

    def train(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self.decode(x)
        for op in self.train_ops:
            x = op(x, generator)
        return x

    @functools.cached_property
    def output_shape(self) -> tuple[int, ...]:
        """What the model takes: the test transforms' output for one example (computed once)."""
        return tuple(self.test(torch.zeros(1, math.prod(self.stored_shape), dtype=torch.uint8)).shape[1:])

    def __call__(self, module: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        if x.dtype == torch.uint8 or x.dim() == 2:
            return (self.test(x), *args[1:])
        return None


def pipeline_of(model: nn.Module) -> InputPipeline | None:
    """The model's input pipeline (its forward pre-hook; through a wrapper such as Opacus's), if it has one."""
    while model is not None:
        found = next((h for h in model._forward_pre_hooks.values() if isinstance(h, InputPipeline)), None)
        if found is not None:
            return found
        model = getattr(model, "_module", None)
    return None


def augmentation_generator(seed: int) -> torch.Generator:
    """A client's augmentation draws in a round: their own stream of its (seed, round, client) seed, so that
    they leave its batch order (and DP-SGD's draws) as they are."""
    return torch.Generator().manual_seed(derive_seed(seed, AUGMENTATION))


def augment(model: nn.Module, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A training batch as the model trains on it: its pipeline's train transforms (random ones from
    `generator`), or the batch as it is where the data has no pipeline."""
    pipeline = pipeline_of(model)
    if pipeline is None or generator is None or not len(x):
        return x
    return pipeline.train(x, generator)


def augment_stack(model: nn.Module, batches: torch.Tensor, counts: Sequence[int],
                  generators: Sequence[torch.Generator]) -> torch.Tensor:
    """A stacked step's batches (clients, rows, ...): client c's first counts[c] rows (its real batch) through
    its train transforms with its generator, as it would train alone, and the padding through the test ones."""
    pipeline = pipeline_of(model)
    if pipeline is None:
        return batches
    out = []
    for rows, count, generator in zip(batches, counts, generators, strict=True):
        parts = [pipeline.train(rows[:count], generator)] if count else []
        if count < len(rows):
            parts.append(pipeline.test(rows[count:]))
        out.append(torch.cat(parts))
    return torch.stack(out)
