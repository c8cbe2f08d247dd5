"""Local training: SGD or Adam over shuffled mini-batches, FedProx's proximal term when mu > 0, and FedLD's
margin-control loss when asked for. The reported loss is the task loss (CE / MSE) alone."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from fedsim.evaluation import task_loss
from fedsim.protocol import LocalTraining


def margin_penalty(outputs: torch.Tensor, reduction: str) -> torch.Tensor:
    """FedLD's margin control: log(1 + |softmax(z)|^2), the norm over the whole batch or per sample (mean)."""
    squared = torch.softmax(outputs, dim=1).pow(2)
    if reduction == "batch":
        return torch.log1p(squared.sum())
    return torch.log1p(squared.sum(dim=1)).mean()


def minibatches(n: int, batch_size: int, epochs: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches for `epochs` passes over range(n), reshuffled by `generator` before each pass."""
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]


def make_optimizer(model: nn.Module, cfg: LocalTraining) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train_locally(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: LocalTraining, task: str,
                  generator: torch.Generator,
                  after_step: Callable[[torch.optim.Optimizer], None] | None = None) -> dict[str, float]:
    """Train `model` in place; returns the mean training loss (and accuracy) over all local steps.
    `after_step(optimizer)` runs after every optimiser step (SalUn's weight restore)."""
    model.train()
    optimizer = make_optimizer(model, cfg)
    anchor = [p.detach().clone() for p in model.parameters()] if cfg.proximal_mu > 0 else None
    total_loss, correct, seen = 0.0, 0, 0
    for idx in minibatches(len(x), cfg.batch_size, cfg.local_epochs, generator):
        xb, yb = x[idx], y[idx]
        outputs = model(xb)
        loss = task_loss(task, outputs, yb)
        total_loss += loss.item() * len(idx)
        if cfg.loss == "fedld-margin":
            loss = loss + cfg.margin_lambda * margin_penalty(outputs, cfg.margin_reduction)
        seen += len(idx)
        if task == "classification":
            correct += int((outputs.argmax(1) == yb).sum())
        if anchor is not None:
            loss = loss + cfg.proximal_mu / 2 * sum((p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step(optimizer)
    metrics = {"loss": total_loss / max(seen, 1)}
    if task == "classification":
        metrics["accuracy"] = correct / max(seen, 1)
    return metrics
