"""Vectorised DP-SGD: the step Opacus takes in `fedsim.features.dp_sgd.train_dp_sgd`, for a stack of clients.

Each client draws from its own generator exactly what Opacus draws from torch's seeded generator one by one: an
int64 when an epoch's data loader starts, one uniform per example for its Poisson batch (an example is in when
its uniform is below the sample rate q), then N(0, (sigma C)^2) noise per parameter tensor, in parameter order.
Per-example gradients come from a nested vmap (clients, then examples) of `torch.func.grad`; each is clipped to
norm C over all parameters (factor min(1, C / (norm + 1e-6)), Opacus's flat clipping), the clipped sum plus the
noise is divided by the expected batch size int(n q), and the optimizer steps as torch.optim's
(`fedsim.stacked.Optimizer`). An empty batch still takes its noise-only step, as Opacus's does. So each client
ends where its Opacus run ends, up to float rounding; its accountant is stepped by the caller, as Opacus does.
The draws are made on the CPU: on a GPU, where Opacus draws its noise from CUDA's generator, the noise has the same
distribution but not the same numbers. Every client needs at least one example (as Opacus does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedsim.evaluation import task_loss
from fedsim.inputs import augment_stack
from fedsim.protocol import LocalTraining
from fedsim.stacked import Optimizer, StackedClients, chunk_size, stacked, stacked_clients
from fedsim.training import Stats


@dataclass
class PrivateClient:
    """One client's DP-SGD round: its data, random stream and noise."""

    x: torch.Tensor
    y: torch.Tensor
    generator: torch.Generator  # seeded as the sequential path seeds torch's own
    batches: int  # Poisson batches per epoch (1 / q)
    noise_multiplier: float
    augmentation: torch.Generator | None = None  # the data's random transforms (fedsim.inputs)

    @property
    def sample_rate(self) -> float:
        return 1.0 / self.batches

    @property
    def expected_batch_size(self) -> int:
        return int(len(self.x) * self.sample_rate)  # Opacus's, for loss_reduction = "mean"


def train_stacked_dp_sgd(model: nn.Module, clients: list[PrivateClient], cfg: LocalTraining, task: str,
                    max_grad_norm: float, memory_mb: float) -> StackedClients:
    """Train one copy of `model` per client with DP-SGD, all at once; returns every client's final state (stacked)
    and stats (task loss over its Poisson batches, steps taken), as its Opacus run would leave them."""
    results: list[StackedClients] = []
    sample = next((c.x for c in clients if len(c.x)), None)
    if sample is None:
        size = len(clients)
    else:
        size = chunk_size(model, sample, cfg, memory_mb, per_example=True)
    for start in range(0, len(clients), size):
        results.append(_train_chunk(model, clients[start : start + size], cfg, task, max_grad_norm))
    return StackedClients.joined(results)


def _per_example_gradients(model: nn.Module, task: str):
    """(clients, examples) -> each example's task-loss gradient under its client's parameters, and the loss."""

    def example_loss(params, x, y):
        loss = task_loss(task, functional_call(model, params, (x.unsqueeze(0),)), y.unsqueeze(0))
        return loss, loss.detach()

    return vmap(vmap(grad(example_loss, has_aux=True), in_dims=(None, 0, 0)))


def _poisson_batch(client: PrivateClient, step: int) -> torch.Tensor:
    """Step `step`'s example indices, drawn as Opacus's Poisson DataLoader draws them."""
    if step % client.batches == 0:  # a new epoch: torch's DataLoader iterator draws its base seed
        torch.empty((), dtype=torch.int64).random_(generator=client.generator)
    keep = torch.rand(len(client.x), generator=client.generator) < client.sample_rate
    return keep.nonzero().view(-1)


def _noise(client: PrivateClient, shapes: list[torch.Size], std: float) -> list[torch.Tensor]:
    """Opacus's noise for one step: N(0, std^2) per parameter tensor, in order (none drawn when std = 0)."""
    if std == 0:
        return [torch.zeros(s) for s in shapes]
    return [torch.normal(mean=0, std=std, size=s, generator=client.generator) for s in shapes]


def _train_chunk(model: nn.Module, clients: list[PrivateClient], cfg: LocalTraining, task: str,
                 max_grad_norm: float) -> StackedClients:
    start = {name: p.detach() for name, p in model.named_parameters()}
    names, shapes = list(start), [p.shape for p in start.values()]
    device = next(iter(start.values())).device
    x_all = torch.cat([c.x for c in clients])
    y_all = torch.cat([c.y for c in clients])
    offsets = torch.tensor([0, *[len(c.x) for c in clients]]).cumsum(0)
    params = stacked(start, len(clients))
    gradients = _per_example_gradients(model, task)
    optimizer = Optimizer(cfg)
    total_steps = [c.batches * cfg.local_epochs for c in clients]
    stats = [Stats() for _ in clients]
    for t in range(max(total_steps, default=0)):
        active = [t < steps for steps in total_steps]
        batches = [_poisson_batch(c, t) if on else torch.zeros(0, dtype=torch.long) for c, on in zip(clients, active)]
        width = max(1, max(len(b) for b in batches))
        rows = torch.stack([torch.cat([b, b.new_zeros(width - len(b))]) + offsets[i] for i, b in enumerate(batches)])
        mask = torch.stack([torch.arange(width) < len(b) for b in batches]).to(device)
        rows = rows.to(device)
        with torch.no_grad():
            x = x_all[rows]
            if clients[0].augmentation is not None:
                x = augment_stack(model, x, [len(b) for b in batches], [c.augmentation for c in clients])
            per_example, losses = gradients(params, x, y_all[rows])
            norms = torch.stack([per_example[k].flatten(2).norm(2, dim=-1) for k in names], dim=-1).norm(2, dim=-1)
            factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0) * mask
            noise = [_noise(c, shapes, c.noise_multiplier * max_grad_norm if on else 0.0)
                     for c, on in zip(clients, active)]
            scale = torch.tensor([float(c.expected_batch_size) for c in clients], device=device)
            grads = {}
            for j, k in enumerate(names):
                # summed over the example axis in order, so the padding (zeros at the end) leaves it as it is:
                # a client's step does not depend on the other clients of its chunk (inline = Ray, bit for bit)
                weights = factor.view(*factor.shape, *([1] * (per_example[k].dim() - 2)))
                summed = (per_example[k] * weights).sum(1)
                noisy = summed + torch.stack([n[j] for n in noise]).to(device)
                grads[k] = noisy / scale.view(-1, *([1] * (noisy.dim() - 1)))
            optimizer.step(params, grads, torch.tensor(active, device=device))
        losses = losses.cpu()
        for c, (s, on, b) in enumerate(zip(stats, active, batches)):
            if on:
                s.loss_sum += losses[c, : len(b)].sum().item()  # the batch's mean loss x its size
                s.weight += len(b)
                s.steps += 1
    return stacked_clients(params, stats)
