"""Clients holding forgotten data send Σ∇ℓ_f (eval mode); the server keeps the top `fraction` of |grad| over all
weights as the mask; masked RL restores unmasked weights (and momentum, and BatchNorm buffers) after every step, and the
server re-applies the mask after averaging, so unmasked weights are bit-identical (tested).

SalUn (ICLR 2024). The saliency step replies with gradients (weighted by the forgotten examples), the mask
travels to every client with the RL rounds.
"""

from __future__ import annotations

import math

import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy
from pydantic import Field
from torch import nn

from fedsim import protocol as p
from fedsim.arrays import record_to_state, state_to_record
from fedsim.evaluation import task_loss
from fedsim.unlearning.methods.base import ClientResult, ClientWork, Job, Method, MethodSettings, Result, Session
from fedsim.unlearning.methods.random_label import relabel_and_train

State = dict[str, torch.Tensor]
SALIENCY, SALUN = "saliency", "salun"  # client steps: the forgetting loss's gradients; masked random labels
MASK = "mask"  # record: the saliency mask (1 = may change)


class SalunSettings(MethodSettings):
    fraction: float = Field(0.5, gt=0, le=1)  # share of weights in the saliency mask


def saliency_gradients(model: nn.Module, x_f: torch.Tensor, y_f: torch.Tensor, task: str,
                       batch_size: int) -> State:
    """SalUn's sum over batches of the gradient of the forgetting loss, model in eval mode."""
    model.eval()
    model.zero_grad(set_to_none=True)
    for start in range(0, len(x_f), batch_size):
        task_loss(task, model(x_f[start : start + batch_size]), y_f[start : start + batch_size]).backward()
    model.train()
    return {name: (q.grad if q.grad is not None else torch.zeros_like(q)).detach().clone()
            for name, q in model.named_parameters()}


def saliency_mask(gradients: State, fraction: float) -> State:
    """SalUn's mask: 1 for the top `fraction` of |gradient| ranked over all parameters together."""
    flat = torch.cat([g.abs().flatten() for g in gradients.values()])
    chosen = torch.zeros(len(flat), dtype=torch.bool)
    chosen[torch.topk(flat, max(1, math.ceil(fraction * len(flat)))).indices] = True
    masks, start = {}, 0
    for key, g in gradients.items():
        masks[key] = chosen[start : start + g.numel()].view(g.shape)
        start += g.numel()
    return masks


def apply_mask(state: State, start: State, mask: State) -> State:
    """theta = m * theta + (1 - m) * theta_start, exactly (entries without a mask keep their start value)."""
    return {k: torch.where(mask[k], v, start[k]) if k in mask else start[k].clone() for k, v in state.items()}


def saliency(work: ClientWork) -> ClientResult:
    _, _, x_f, y_f = work.data
    gradients = saliency_gradients(work.model, x_f, y_f, work.task, work.local.batch_size)
    return ClientResult({}, len(x_f), gradients)


def masked_relabel(work: ClientWork) -> ClientResult:
    x_r, _, x_f, _ = work.data
    mask = {k: v.to(work.device) for k, v in work.content[MASK].to_torch_state_dict().items()}
    metrics = relabel_and_train(work.model, work.data, work.num_classes, work.local, work.generator, mask)
    return ClientResult(metrics, len(x_r) + len(x_f))


def serve(session: Session, job: Job, strategy: Strategy) -> Result:
    """Saliency gradients from the clients holding forgotten data (summed), the mask, then masked RL; the
    server re-applies the mask after aggregating, so unmasked weights are exactly the start's."""
    _, local = session.budget("salun")
    replies = session.client_step(job, SALIENCY, 0, job.arrays, local, session.holders(job))
    gradients: State = {}
    for reply in replies:
        for key, g in reply.content[p.ARRAYS].to_torch_state_dict().items():
            gradients[key] = gradients.get(key, 0) + g
    mask = saliency_mask(gradients, session.method_settings("salun").fraction)
    start = record_to_state(job.arrays)  # read-only (apply_mask builds new tensors)

    def restore(arrays: ArrayRecord) -> ArrayRecord:
        return state_to_record(apply_mask(arrays.to_torch_state_dict(), start, mask))

    arrays, rounds = session.federated_steps(job, SALUN, {MASK: state_to_record(mask)}, after=restore)
    return Result(arrays, rounds + 1)


METHOD = Method("salun", __doc__, serve, tasks=frozenset({"classification"}),
                client_steps={SALIENCY: saliency, SALUN: masked_relabel}, settings=SalunSettings, position=4)
