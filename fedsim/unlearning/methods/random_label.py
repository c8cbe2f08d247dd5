"""Forgotten examples get random (wrong) labels, trained together with retained data.

RL: every client not already forgotten trains on its retained data and its forgotten examples relabelled with
a class drawn uniformly from the other classes; `rounds` rounds, example-weighted average.
"""

from __future__ import annotations

import torch
from flwr.serverapp.strategy import Strategy
from torch import nn

from fedsim.protocol import LocalTraining
from fedsim.training import train_locally
from fedsim.unlearning.methods.base import ClientResult, ClientWork, Job, Method, Result, Session, Split

RANDOM_LABEL = "random-label"  # the client step


def random_labels(y_f: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Labels drawn uniformly from the classes other than the true one."""
    shift = torch.randint(1, num_classes, (len(y_f),), generator=generator)
    return (y_f + shift) % num_classes


def masked_restore(model: nn.Module, mask: dict[str, torch.Tensor], start: dict[str, torch.Tensor]):
    """SalUn's after-step hook: unmasked weights back to their start values, momentum masked too."""
    named = [(q, mask[name].to(q.dtype), start[name]) for name, q in model.named_parameters()]

    def restore(optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            for q, m, q0 in named:
                q.copy_(torch.where(m.bool(), q, q0))
                buffer = optimizer.state.get(q, {}).get("momentum_buffer")
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


def relabel(work: ClientWork) -> ClientResult:
    x_r, _, x_f, _ = work.data
    return ClientResult(relabel_and_train(work.model, work.data, work.num_classes, work.local, work.generator),
                        len(x_r) + len(x_f))


def serve(session: Session, job: Job, strategy: Strategy) -> Result:
    return Result(*session.federated_steps(job, RANDOM_LABEL))


METHOD = Method("random-label", __doc__, serve, tasks=frozenset({"classification"}),
                client_steps={RANDOM_LABEL: relabel}, position=3)
