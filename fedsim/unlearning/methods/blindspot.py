"""A fresh model trained one FedAvg round of `model_epochs` local epochs on retained data; then every client
minimises c·L_f + (1 − c)·L_r with L_f the L1 distance to the blindspot model's outputs + β·Σ‖A(a_l) − A(a_l^bs)‖² over
ReLU activations (A as the authors define it: for an MLP's (batch, units) activations the attention term is zero;
`attention = "units"` keeps one).

Blindspot (Deep Regression Unlearning, ICML 2023; regression). A(a) is the L2-normalised map of squared
activations averaged over channels (dim 1), as in the authors' code: a (batch, units) activation then has one
value per example, normalised to 1, so the term vanishes. "units" reads such an activation as one channel whose
positions are the units instead.
"""

from __future__ import annotations

from typing import Literal

import torch
from flwr.serverapp.strategy import Strategy
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from fedsim import protocol as p
from fedsim.arrays import state_to_record
from fedsim.errors import FedsimError
from fedsim.protocol import LocalTraining
from fedsim.seeding import derive_seed
from fedsim.training import Step, minibatches, train_loop
from fedsim.unlearning.methods.base import (
    ClientResult,
    ClientWork,
    Job,
    Method,
    MethodSettings,
    Result,
    Session,
    Split,
    weighted,
)

BLINDSPOT = "blindspot"  # the client step, and the record holding the blindspot model's weights
BETA, ATTENTION = "beta", "attention"  # config: the attention term's weight and map


class BlindspotSettings(MethodSettings):
    beta: float = Field(50.0, ge=0)  # weight of the attention term
    model_epochs: int = Field(2, ge=1)  # local epochs of the blindspot model's one FedAvg round
    # the attention map A(a): "channels" (the authors': mean over channels, so a (batch, units) activation gives one
    # value per example and no attention term) or "units" (a (batch, units) activation as one channel of units)
    attention: Literal["channels", "units"] = "channels"


def attention(activation: torch.Tensor, mode: str = "channels") -> torch.Tensor:
    """A(a): channel mean of squared activations, flattened and L2-normalised per example. "channels" (the
    authors') averages a 2-D (batch, units) activation over its units (one value per example); "units" keeps
    the units as the positions of one channel."""
    squared = activation.pow(2)
    pooled = squared if squared.dim() == 2 and mode == "units" else squared.mean(dim=1)
    return F.normalize(pooled.reshape(len(pooled), -1), dim=1)


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
              generator: torch.Generator, mode: str = "channels") -> dict[str, float]:
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
                l_f = l_f + beta * (attention(a[forgotten], mode) - attention(b, mode)).pow(2).sum(dim=1).mean()
            loss = loss + c * l_f
        return Step(loss, loss, 1)  # reported per step: the mean of the steps' losses

    batches = minibatches(len(x), cfg.batch_size, cfg.local_epochs, generator)
    return train_loop(model, batches, cfg, loss_fn).metrics()


def step(work: ClientWork) -> ClientResult:
    x_r, _, x_f, _ = work.data
    blind = work.new_model()
    blind.load_state_dict(work.content[BLINDSPOT].to_torch_state_dict())
    metrics = blindspot(work.model, blind, work.data, work.local, float(work.config[BETA]), work.generator,
                        str(work.config.get(ATTENTION, "channels")))
    return ClientResult(metrics, len(x_r) + len(x_f))


def serve(session: Session, job: Job, strategy: Strategy) -> Result:
    """A fresh model trained on retained data only, then the blindspot loss on every client."""
    if session.random_model is None:
        raise FedsimError("unlearning", "blindspot needs a fresh model to train", "pass random_model=")
    own = session.method_settings("blindspot")
    fresh = state_to_record(session.random_model(derive_seed(session.seed, job.request.at_round, 13)))
    blind = session.train_round(session.fresh_strategy(), job.grid, fresh, session.round_number(job, 0),
                                job.now, {p.LOCAL_EPOCHS: own.model_epochs})
    rounds, local = session.budget("blindspot")
    arrays = job.arrays
    for step_index in range(rounds):
        replies = session.client_step(job, BLINDSPOT, step_index + 1, arrays, local,
                                      extra={BETA: own.beta, ATTENTION: own.attention}, records={BLINDSPOT: blind})
        arrays = weighted(replies) or arrays
    return Result(arrays, rounds + 1)


METHOD = Method("blindspot", __doc__, serve, tasks=frozenset({"regression"}),
                client_steps={BLINDSPOT: step}, settings=BlindspotSettings, position=7)
