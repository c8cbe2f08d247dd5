"""How many activations (floats of module outputs) a model produces per example: what bounds a vectorised step's
chunk of clients (fedsim.stacked) and a CPU evaluation batch (fedsim.evaluation)."""

from __future__ import annotations

import weakref

import torch
from torch import nn

_COUNTS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, int]] = weakref.WeakKeyDictionary()


def activations_per_example(model: nn.Module, sample: torch.Tensor) -> int:
    """Every module's output size for one example of `sample`'s shape (one forward pass in eval mode, so nothing
    updates running statistics; once per model and input shape: a client process asks every round)."""
    shapes = _COUNTS.setdefault(model, {})
    key = (tuple(sample.shape[1:]), sample.dtype)
    if key not in shapes:
        shapes[key] = _count(model, sample)
    return shapes[key]


def _count(model: nn.Module, sample: torch.Tensor) -> int:
    activations = 0

    def count(_module, _inputs, output):
        nonlocal activations
        if isinstance(output, torch.Tensor):
            activations += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(sample[:1])
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return activations
