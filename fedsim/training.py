"""The one local-optimisation loop (`train_loop`: every place fedsim takes optimiser steps goes through it), and
plain local training on it (`train_locally`: task loss, FedLD's margin-control loss, FedProx's proximal term).

Plain local training, training on bags, DP-SGD (Opacus wraps the model and the optimizer; the loop is the same),
every unlearning method's client step and the relearn-time metric differ only in what a step's loss is
(`loss_fn`), where the batches come from, and what happens around the step (gradient clipping, a projection, a
weight restore). The optimizer always comes from the LocalTraining settings (`sgd` or `adam`), so the client's
choice holds everywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from fedsim.evaluation import task_loss
from fedsim.inputs import augment
from fedsim.protocol import LocalTraining

Batch = TypeVar("Batch")


@dataclass
class Step:
    """What `loss_fn` returns for one batch: the objective to minimise and what to report."""

    objective: torch.Tensor  # minimised (e.g. -loss for gradient ascent); the proximal term is added by the loop
    reported: torch.Tensor  # the loss reported in metrics (the task loss alone)
    weight: int  # how many examples `reported` stands for (its weight in the reported mean)
    correct: int | None = None  # classification: correct predictions in the batch


@dataclass
class Stats:
    """What a loop did: the weighted sum of the reported loss, correct predictions, optimiser steps."""

    loss_sum: float = 0.0
    weight: int = 0
    correct: int = 0
    steps: int = 0

    def metrics(self, loss_key: str = "loss", accuracy: bool = False) -> dict[str, float]:
        """The weighted mean reported loss (and the accuracy over the reported examples)."""
        out = {loss_key: self.loss_sum / max(self.weight, 1)}
        if accuracy:
            out["accuracy"] = self.correct / max(self.weight, 1)
        return out


def minibatches(n: int, batch_size: int, epochs: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches for `epochs` passes over range(n), reshuffled by `generator` before each pass."""
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]


@functools.cache
def warm_up() -> None:
    """Pay this process's one-off cost of eager training now, once: the first torch.optim optimizer imports
    torch._dynamo (1-2 s). A run that times methods against each other (unlearning) calls it at start-up, so the
    cost does not land in whichever method happens to train one by one first."""
    param = torch.zeros(1, requires_grad=True)
    for optimizer in (torch.optim.SGD([param], lr=0.0, momentum=0.9), torch.optim.Adam([param], lr=0.0)):
        param.sum().backward()
        optimizer.step()
        optimizer.zero_grad()


def make_optimizer(model: nn.Module, cfg: LocalTraining) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train_loop(model: nn.Module, batches: Iterable[Batch], cfg: LocalTraining, loss_fn: Callable[[Batch], Step], *,
               optimizer: torch.optim.Optimizer | None = None, clip: float | None = None,
               after_step: Callable[[torch.optim.Optimizer], None] | None = None,
               stop: Callable[[], bool] | None = None) -> Stats:
    """Train `model` in place: for each batch, `loss_fn(batch)`, plus FedProx's proximal term when
    `cfg.proximal_mu` > 0, backward, gradient-norm clip to `clip`, optimiser step, `after_step(optimizer)`.

    `optimizer` defaults to the one `cfg` names (pass Opacus's DP optimizer to wrap it); `stop()` is asked
    before each batch and ends the loop when true.
    """
    model.train()
    optimizer = optimizer or make_optimizer(model, cfg)
    anchor = [p.detach().clone() for p in model.parameters()] if cfg.proximal_mu > 0 else None
    stats = Stats()
    for batch in batches:
        if stop is not None and stop():
            break
        step = loss_fn(batch)
        stats.loss_sum += step.reported.item() * step.weight
        stats.weight += step.weight
        stats.correct += step.correct or 0
        objective = step.objective
        if anchor is not None:
            objective = objective + cfg.proximal_mu / 2 * sum(
                (p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor))
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if after_step is not None:
            after_step(optimizer)
        stats.steps += 1
    return stats


# ---- plain local training ----------------------------------------------------------------------------------
def margin_penalty(outputs: torch.Tensor, reduction: str) -> torch.Tensor:
    """FedLD's margin control: log(1 + |softmax(z)|^2), the norm over the whole batch or per sample (mean)."""
    squared = torch.softmax(outputs, dim=1).pow(2)
    if reduction == "batch":
        return torch.log1p(squared.sum())
    return torch.log1p(squared.sum(dim=1)).mean()


def train_locally(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: LocalTraining, task: str,
                  generator: torch.Generator,
                  after_step: Callable[[torch.optim.Optimizer], None] | None = None,
                  augmentation: torch.Generator | None = None) -> dict[str, float]:
    """Train `model` in place; returns the mean training loss (and accuracy) over all local steps.
    `after_step(optimizer)` runs after every optimiser step (SalUn's weight restore); `augmentation`: the
    generator of the data's random transforms (fedsim.inputs; without it batches get the test-time ones)."""
    classification = task == "classification"

    def loss_fn(idx: torch.Tensor) -> Step:
        xb, yb = augment(model, x[idx], augmentation), y[idx]
        outputs = model(xb)
        loss = task_loss(task, outputs, yb)
        objective = loss + cfg.margin_lambda * margin_penalty(outputs, cfg.margin_reduction) \
            if cfg.loss == "fedld-margin" else loss
        correct = int((outputs.argmax(1) == yb).sum()) if classification else None
        return Step(objective, loss, len(idx), correct)

    batches = minibatches(len(x), cfg.batch_size, cfg.local_epochs, generator)
    return train_loop(model, batches, cfg, loss_fn, after_step=after_step).metrics(accuracy=classification)
