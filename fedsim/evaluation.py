"""Metrics of a model on a dataset: accuracy + cross-entropy, or mse + mae for regression."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def task_loss(task: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (classification) or mean squared error (regression)."""
    if task == "regression":
        return F.mse_loss(outputs.squeeze(-1), targets)
    return F.cross_entropy(outputs, targets)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """The model's outputs in eval mode, in large batches; its train/eval mode is left as it was."""
    was_training = model.training
    model.eval()
    outputs = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x) else model(x)
    model.train(was_training)
    return outputs


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, batch_size: int = 4096) -> dict[str, float]:
    """Evaluate in large batches; returns {'loss', 'accuracy'} or {'loss', 'mse', 'mae'}."""
    outputs = predict(model, x, batch_size)
    loss = task_loss(task, outputs, y).item()
    if task == "regression":
        return {"loss": loss, "mse": loss, "mae": (outputs.squeeze(-1) - y).abs().mean().item()}
    return {"loss": loss, "accuracy": (outputs.argmax(1) == y).float().mean().item()}
