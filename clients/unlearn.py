"""Client-side unlearning steps (docs/algorithms.md, Machine unlearning), each on one client's forgotten / retained split.

The server says which step in the `method` entry of the ConfigRecord; `split` separates the partition into
retained data R and the data F this request forgets (data forgotten by earlier requests is in neither).
"""

from __future__ import annotations

import torch
from fedsim.clients.train import train_locally
from flwr.app import ConfigRecord
from torch import nn
from torch.nn import functional as F

from fedsim import protocol
from fedsim.evaluation import task_loss
from fedsim.protocol import LocalTraining
from fedsim.training import Step, minibatches, train_loop
from fedsim.unlearning.forget import Forgotten

Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def split(pid: int, x: torch.Tensor, y: torch.Tensor, config: ConfigRecord) -> Split:
    """(x_r, y_r, x_f, y_f): retained data, and the data this request forgets."""
    present = Forgotten.read(config, protocol.FORGET).kept(pid, y)
    requested = ~Forgotten.read(config, protocol.UNLEARN_TARGET).kept(pid, y)
    f, r = present & requested, present & ~requested
    return x[r], y[r], x[f], y[f]


def saliency_gradients(model: nn.Module, x_f: torch.Tensor, y_f: torch.Tensor, task: str,
                       batch_size: int) -> dict[str, torch.Tensor]:
    """SalUn's sum over batches of the gradient of the forgetting loss, model in eval mode."""
    model.eval()
    model.zero_grad(set_to_none=True)
    for start in range(0, len(x_f), batch_size):
        task_loss(task, model(x_f[start : start + batch_size]), y_f[start : start + batch_size]).backward()
    model.train()
    return {name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
            for name, p in model.named_parameters()}


def project_to_ball(model: nn.Module, center: list[torch.Tensor], radius: float) -> None:
    """Project all parameters (as one vector) onto the L2 ball of `radius` around `center`."""
    with torch.no_grad():
        params = list(model.parameters())
        norm = torch.sqrt(sum((p - c).pow(2).sum() for p, c in zip(params, center, strict=True)))
        if norm > radius:
            for p, c in zip(params, center, strict=True):
                p.copy_(c + (p - c) * (radius / norm))


def gradient_ascent(model: nn.Module, x_f: torch.Tensor, y_f: torch.Tensor, cfg: LocalTraining, task: str,
                    generator: torch.Generator, clip: float | None = None,
                    radius: float | None = None) -> dict[str, float]:
    """Maximise the loss on the forgotten data (GA); with `radius`, projected onto the ball around the start
    (PGA), with `clip`, gradients clipped to that norm."""
    center = [p.detach().clone() for p in model.parameters()] if radius is not None else None

    def loss_fn(idx: torch.Tensor) -> Step:
        loss = task_loss(task, model(x_f[idx]), y_f[idx])
        return Step(-loss, loss, len(idx))

    project = (lambda _optimizer: project_to_ball(model, center, radius)) if center is not None else None
    batches = minibatches(len(x_f), cfg.batch_size, cfg.local_epochs, generator)
    return train_loop(model, batches, cfg, loss_fn, clip=clip, after_step=project).metrics("forget_loss")


def random_labels(y_f: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Labels drawn uniformly from the classes other than the true one."""
    shift = torch.randint(1, num_classes, (len(y_f),), generator=generator)
    return (y_f + shift) % num_classes


def masked_restore(model: nn.Module, mask: dict[str, torch.Tensor], start: dict[str, torch.Tensor]):
    """SalUn's after-step hook: unmasked weights back to their start values, momentum masked too."""
    named = [(p, mask[name].to(p.dtype), start[name]) for name, p in model.named_parameters()]

    def restore(optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            for p, m, p0 in named:
                p.copy_(torch.where(m.bool(), p, p0))
                buffer = optimizer.state.get(p, {}).get("momentum_buffer")
                if buffer is not None:
                    buffer.mul_(m)

    return restore


def relabel_and_train(model: nn.Module, data: Split, num_classes: int, cfg: LocalTraining,
                      generator: torch.Generator, mask: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """RL: forgotten examples with random labels, trained together with retained data; with `mask`, SalUn
    (only masked weights move; buffers such as BatchNorm statistics are restored too)."""
    x_r, y_r, x_f, y_f = data
    x = torch.cat([x_r, x_f])
    y = torch.cat([y_r, random_labels(y_f, num_classes, generator)])
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    hook = masked_restore(model, mask, start) if mask is not None else None
    metrics = train_locally(model, x, y, cfg, "classification", generator, after_step=hook)
    if mask is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for key, value in model.state_dict().items():
                if key not in params:
                    value.copy_(start[key])
    return metrics


def gaussian_targets(data: Split, cfg: LocalTraining, model: nn.Module, generator: torch.Generator
                     ) -> dict[str, float]:
    """Regression: forgotten targets replaced by draws from N(mean(y), std(y)) of the client's targets,
    then fine-tuning on retained and relabelled data."""
    x_r, y_r, x_f, y_f = data
    y_all = torch.cat([y_r, y_f])
    noisy = y_all.mean() + y_all.std(unbiased=False) * torch.randn(len(y_f), generator=generator)
    return train_locally(model, torch.cat([x_r, x_f]), torch.cat([y_r, noisy.to(y_f.dtype)]), cfg, "regression",
                         generator)


def _attention(activation: torch.Tensor) -> torch.Tensor:
    """A(a): channel mean of squared activations, flattened and L2-normalised per example. A 2-D (batch,
    units) activation is one channel whose positions are the units."""
    squared = activation.pow(2)
    pooled = squared.mean(dim=1) if squared.dim() > 2 else squared
    return F.normalize(pooled.flatten(1), dim=1)


def _activations(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    captured: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: captured.append(out))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        return model(x), captured
    finally:
        for h in hooks:
            h.remove()


def blindspot(model: nn.Module, blind: nn.Module, data: Split, cfg: LocalTraining, beta: float,
              generator: torch.Generator) -> dict[str, float]:
    """Deep Regression Unlearning's blindspot step: one pass over R and F with loss c L_f + (1 - c) L_r,
    L_r = L1 to the targets, L_f = L1 to the blindspot model's outputs + beta * attention distance."""
    x_r, y_r, x_f, _ = data
    x = torch.cat([x_r, x_f])
    is_forgotten = torch.cat([torch.zeros(len(x_r), dtype=torch.bool), torch.ones(len(x_f), dtype=torch.bool)])
    y = torch.cat([y_r, torch.zeros(len(x_f), dtype=y_r.dtype)])
    blind.eval()

    def loss_fn(idx: torch.Tensor) -> Step:
        forgotten = is_forgotten[idx]
        c = forgotten.float().mean()
        out, acts = _activations(model, x[idx])
        out = out.squeeze(-1)
        loss = torch.zeros(())
        if (~forgotten).any():
            loss = loss + (1 - c) * F.l1_loss(out[~forgotten], y[idx][~forgotten])
        if forgotten.any():
            with torch.no_grad():
                blind_out, blind_acts = _activations(blind, x[idx][forgotten])
            l_f = F.l1_loss(out[forgotten], blind_out.squeeze(-1))
            for a, b in zip(acts, blind_acts, strict=True):
                l_f = l_f + beta * (_attention(a[forgotten]) - _attention(b)).pow(2).sum(dim=1).mean()
            loss = loss + c * l_f
        return Step(loss, loss, 1)  # reported per step: the mean of the steps' losses

    batches = minibatches(len(x), cfg.batch_size, cfg.local_epochs, generator)
    return train_loop(model, batches, cfg, loss_fn).metrics()
