"""Clients holding the forgotten data ascend its loss; example-weighted average.

GA: for client and sample requests only the holder takes part, for class requests every client with examples
of the class; `rounds` rounds of `epochs` local epochs. The client step also serves PGA (with a gradient-norm
clip, a projection onto a ball around the received model and an early stop once far from the client's own model).
"""

from __future__ import annotations

import torch
from flwr.serverapp.strategy import Strategy
from torch import nn

from fedsim.evaluation import task_loss
from fedsim.protocol import LocalTraining
from fedsim.training import Step, minibatches, train_loop
from fedsim.unlearning.methods.base import ClientResult, ClientWork, Job, Method, Result, Session

GRADIENT_ASCENT = "gradient-ascent"  # the client step
# what the step also reads when PGA sends it (fedsim.unlearning.methods.pga)
CLIP = "clip"  # config: gradient-norm clip
RADIUS = "radius"  # config: projection radius around the received model
STOP_DISTANCE = "stop-distance"  # config: end the ascent once this far (L2) from the TARGET_MODEL record
TARGET_MODEL = "target-model"  # record: the forgotten client's last model


def distance(model: nn.Module, other: list[torch.Tensor]) -> float:
    """L2 distance between the model's parameters and `other`, as one vector."""
    with torch.no_grad():
        return float(torch.sqrt(sum((q - o).pow(2).sum() for q, o in zip(model.parameters(), other, strict=True))))


def project_to_ball(model: nn.Module, center: list[torch.Tensor], radius: float) -> None:
    """Project all parameters (as one vector) onto the L2 ball of `radius` around `center`."""
    norm = distance(model, center)
    if norm > radius:
        with torch.no_grad():
            for q, c in zip(model.parameters(), center, strict=True):
                q.copy_(c + (q - c) * (radius / norm))


def gradient_ascent(model: nn.Module, x_f: torch.Tensor, y_f: torch.Tensor, cfg: LocalTraining, task: str,
                    generator: torch.Generator, clip: float | None = None, radius: float | None = None,
                    stop_at: tuple[list[torch.Tensor], float] | None = None) -> dict[str, float]:
    """Maximise the loss on the forgotten data (GA); with `radius`, projected onto the ball around the start
    (PGA), with `clip`, gradients clipped to that norm; with `stop_at` = (parameters, d), no further step once
    the model is more than d from those parameters (PGA's early stop, checked after every step)."""
    center = [q.detach().clone() for q in model.parameters()] if radius is not None else None

    def loss_fn(idx: torch.Tensor) -> Step:
        loss = task_loss(task, model(x_f[idx]), y_f[idx])
        return Step(-loss, loss, len(idx))

    project = (lambda _optimizer: project_to_ball(model, center, radius)) if center is not None else None
    batches = minibatches(len(x_f), cfg.batch_size, cfg.local_epochs, generator)
    stop = (lambda: distance(model, stop_at[0]) > stop_at[1]) if stop_at is not None else None
    stats = train_loop(model, batches, cfg, loss_fn, clip=clip, after_step=project, stop=stop)
    return {**stats.metrics("forget_loss"), **({"steps": float(stats.steps)} if stop_at is not None else {})}


def ascend(work: ClientWork) -> ClientResult:
    _, _, x_f, y_f = work.data
    stop_at = None
    if STOP_DISTANCE in work.config:
        own = work.content[TARGET_MODEL].to_torch_state_dict()
        stop_at = ([own[name].to(work.device) for name, _ in work.model.named_parameters()],
                   float(work.config[STOP_DISTANCE]))
    metrics = gradient_ascent(work.model, x_f, y_f, work.local, work.task, work.generator, work.config.get(CLIP),
                              work.config.get(RADIUS), stop_at)
    return ClientResult(metrics, len(x_f))


def serve(session: Session, job: Job, strategy: Strategy) -> Result:
    arrays, rounds = session.federated_steps(job, GRADIENT_ASCENT, nodes=session.holders(job))
    return Result(arrays, rounds)


METHOD = Method("gradient-ascent", __doc__, serve, client_steps={GRADIENT_ASCENT: ascend}, position=2)
