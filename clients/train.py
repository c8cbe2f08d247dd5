"""Local training: SGD or Adam over shuffled mini-batches (fedsim.training's loop), FedProx's proximal term when
mu > 0, and FedLD's margin-control loss when asked for. The reported loss is the task loss (CE / MSE) alone."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedsim.evaluation import task_loss
from fedsim.protocol import LocalTraining
from fedsim.training import Step, minibatches, train_loop


def margin_penalty(outputs: torch.Tensor, reduction: str) -> torch.Tensor:
    """FedLD's margin control: log(1 + |softmax(z)|^2), the norm over the whole batch or per sample (mean)."""
    squared = torch.softmax(outputs, dim=1).pow(2)
    if reduction == "batch":
        return torch.log1p(squared.sum())
    return torch.log1p(squared.sum(dim=1)).mean()


def train_locally(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: LocalTraining, task: str,
                  generator: torch.Generator,
                  after_step: Callable[[torch.optim.Optimizer], None] | None = None) -> dict[str, float]:
    """Train `model` in place; returns the mean training loss (and accuracy) over all local steps.
    `after_step(optimizer)` runs after every optimiser step (SalUn's weight restore)."""
    classification = task == "classification"

    def loss_fn(idx: torch.Tensor) -> Step:
        xb, yb = x[idx], y[idx]
        outputs = model(xb)
        loss = task_loss(task, outputs, yb)
        objective = loss + cfg.margin_lambda * margin_penalty(outputs, cfg.margin_reduction) \
            if cfg.loss == "fedld-margin" else loss
        correct = int((outputs.argmax(1) == yb).sum()) if classification else None
        return Step(objective, loss, len(idx), correct)

    batches = minibatches(len(x), cfg.batch_size, cfg.local_epochs, generator)
    return train_loop(model, batches, cfg, loss_fn, after_step=after_step).metrics(accuracy=classification)
