"""Forgotten targets replaced by draws from N(mean y, std y) of the client's targets, then fine-tuning.

Gaussian (regression): every client not already forgotten fine-tunes on its retained data and its forgotten
examples with noise targets; `rounds` rounds, example-weighted average.
"""

from __future__ import annotations

import torch
from flwr.serverapp.strategy import Strategy
from torch import nn

from fedsim.protocol import LocalTraining
from fedsim.training import train_locally
from fedsim.unlearning.methods.base import ClientResult, ClientWork, Job, Method, Result, Session, Split

GAUSSIAN = "gaussian"  # the client step


def gaussian_targets(data: Split, cfg: LocalTraining, model: nn.Module, generator: torch.Generator
                     ) -> dict[str, float]:
    """Regression: forgotten targets replaced by draws from N(mean(y), std(y)) of the client's targets,
    then fine-tuning on retained and relabelled data."""
    x_r, y_r, x_f, y_f = data
    y_all = torch.cat([y_r, y_f])
    noisy = y_all.mean() + y_all.std(unbiased=False) * torch.randn(len(y_f), generator=generator)
    return train_locally(model, torch.cat([x_r, x_f]), torch.cat([y_r, noisy.to(y_f.dtype)]), cfg, "regression",
                         generator)


def step(work: ClientWork) -> ClientResult:
    x_r, _, x_f, _ = work.data
    return ClientResult(gaussian_targets(work.data, work.local, work.model, work.generator), len(x_r) + len(x_f))


def serve(session: Session, job: Job, strategy: Strategy) -> Result:
    return Result(*session.federated_steps(job, GAUSSIAN))


METHOD = Method("gaussian", __doc__, serve, tasks=frozenset({"regression"}), client_steps={GAUSSIAN: step},
                position=8)
