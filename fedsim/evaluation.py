"""Metrics of a model on a dataset: accuracy + cross-entropy, or mse + mae for regression."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fedsim.activations import activations_per_example
from fedsim.inputs import pipeline_of


def task_loss(task: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (classification) or mean squared error (regression)."""
    if task == "regression":
        return F.mse_loss(outputs.squeeze(-1), targets)
    return F.cross_entropy(outputs, targets)


def class_log_softmax(outputs: torch.Tensor) -> torch.Tensor:
    """log_softmax over the classes of (examples, classes) outputs, taken along the examples' axis of the transposed
    outputs: the same values, faster than torch's kernel over a short class axis (10 classes: 48k test examples
    0.8 vs 7.4 ms; a stacked step's 100 clients x 16 examples, forward and backward, ~0.3 vs ~0.7 ms)."""
    return torch.log_softmax(outputs.t().contiguous(), 0).t()


def measured_loss(task: str, outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """task_loss's value, for measuring (no gradient; cross-entropy from class_log_softmax)."""
    if task == "regression" or outputs.dim() != 2:
        return task_loss(task, outputs, targets).item()
    return F.nll_loss(class_log_softmax(outputs), targets).item()


LARGE_BATCH = 4096  # examples per evaluation batch while an example has at most this many inputs
BATCH_INPUTS = 2**24  # beyond, batches hold about this many model inputs (64 MB of float32; e.g. 37 384x384 RGB)
CPU_BATCH_ACTIVATIONS = 2**23  # on a CPU, a batch's activations stay within this many floats (32 MB): beyond, under
# glibc's default malloc, its tensors are page-faulted afresh every batch. bench-w4's CNN (196k activations an
# example) evaluated 4,096 examples a batch took 1.9x as long as 32 a batch (2.7 s of it in the kernel, against
# 0.01 s). fedsim.allocator spares fedsim's own processes most of that; this bound serves every process (the plain
# loop's, Flower's own under `flwr run`)


def batch_size_for(model: nn.Module, x: torch.Tensor) -> int:
    """Evaluation batch size: large for small inputs, bounded by BATCH_INPUTS for images (a raw uint8 batch grows
    to the model's input shape in its pipeline, fedsim.inputs) and on a CPU by CPU_BATCH_ACTIVATIONS."""
    pipeline = pipeline_of(model)
    per_example = math.prod(pipeline.output_shape) if pipeline is not None else (x[0].numel() if len(x) else 1)
    size = LARGE_BATCH if per_example <= LARGE_BATCH else max(1, BATCH_INPUTS // per_example)
    if x.device.type == "cpu" and len(x):
        size = min(size, max(1, CPU_BATCH_ACTIVATIONS // activations_per_example(model, x)))
    return size


@torch.no_grad()
def outputs_of(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """The model's outputs on `x`, in its current mode, in large batches (`batch_size_for` by default)."""
    batch_size = batch_size or batch_size_for(model, x)
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x) else model(x)


def predict(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """The model's outputs in eval mode, in large batches; its train/eval mode is left as it was."""
    was_training = model.training
    model.eval()
    try:
        return outputs_of(model, x, batch_size)
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, batch_size: int | None = None
             ) -> dict[str, float]:
    """Evaluate in large batches; returns {'loss', 'accuracy'} or {'loss', 'mse', 'mae'}."""
    outputs = predict(model, x, batch_size)
    loss = measured_loss(task, outputs, y)
    if task == "regression":
        return {"loss": loss, "mse": loss, "mae": (outputs.squeeze(-1) - y).abs().mean().item()}
    return {"loss": loss, "accuracy": (outputs.argmax(1) == y).float().mean().item()}
