"""Vectorised local training: the clients of a round that start from the same model with the same settings,
trained together as one batched computation.

Every client's parameters (and optimizer state) are stacked along a leading client axis; each step evaluates
every client's objective with `torch.func.vmap(functional_call)` and takes one `autograd.grad` of their sum. Client c's
t-th step uses exactly the batch its sequential
run would use at its t-th step (`fedsim.training.minibatches` with its own generator); batches are padded to
the batch size and the padding masked out of the loss, and a client whose batches have run out is not updated
(nor is its optimizer state). The objective is `fedsim.training.train_locally`'s (task loss, FedLD's margin
term, FedProx's proximal term); SGD (momentum, weight decay) and Adam (L2 weight decay) step as torch.optim's do.
So each client ends where its sequential run ends, up to float rounding.

Cohorts are cut into chunks whose stacked parameters, optimizer state and activations fit `memory_mb`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

from fedsim.activations import activations_per_example
from fedsim.evaluation import class_log_softmax
from fedsim.inputs import augment_stack
from fedsim.protocol import LocalTraining
from fedsim.training import Stats


def unsupported_model(model: nn.Module) -> str | None:
    """Why `model` cannot be trained vectorised (None when it can): modules that keep state between steps, or
    that draw from torch's global generator (dropout: its masks would not follow each client's sequential run)."""
    stateful = sorted({type(m).__name__ for m in model.modules() if any(True for _ in m.buffers(recurse=False))})
    if stateful:
        return f"{', '.join(stateful)} keeps running statistics (buffers) that a vectorised step cannot update"
    random = sorted({type(m).__name__ for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)})
    if random:
        return f"{', '.join(random)} draws its masks from torch's global generator, one client after another"
    return None


@dataclass
class TrainedClient:
    state: dict[str, torch.Tensor]
    stats: Stats


@dataclass
class StackedClients:
    """Every client's final state, chunk by chunk (each chunk's clients stacked along a leading client axis, in
    order), and each client's training stats."""

    parts: list[dict[str, torch.Tensor]]
    stats: list[Stats]

    def clients(self) -> list[TrainedClient]:
        """Each client's slice of the stack (views, no copies) with its stats."""
        states = [{name: p[row] for name, p in part.items()} for part in self.parts
                  for row in range(len(next(iter(part.values()))))]
        return [TrainedClient(state, s) for state, s in zip(states, self.stats, strict=True)]

    @staticmethod
    def joined(chunks: list[StackedClients]) -> StackedClients:
        """Chunks of one cohort as one (their parts in order, no copy)."""
        return StackedClients([p for c in chunks for p in c.parts], [s for c in chunks for s in c.stats])


@dataclass
class Schedule:
    """Every client's batches as rows of the concatenated data: rows[t, c] (padded), mask[t, c] (real rows)."""

    rows: torch.Tensor  # (steps, clients, batch) long
    mask: torch.Tensor  # (steps, clients, batch) float, 1 for a real example
    counts: torch.Tensor  # (steps, clients) long: real examples in each batch (0: the client is done)


def schedule(sizes: list[int], cfg: LocalTraining, generators: list[torch.Generator]) -> Schedule:
    """The batches `minibatches` draws for each client (same generator, same draws: one permutation per epoch, cut
    into batches), offset into the concatenation of the clients' data and padded to the batch size."""
    size, epochs = cfg.batch_size, cfg.local_epochs
    per_epoch = [math.ceil(n / size) for n in sizes]
    steps = max((epochs * b for b in per_epoch), default=0)
    rows = torch.full((len(sizes) * steps * size,), -1, dtype=torch.long)
    # an epoch's batches fill its slots in order (its last one padded): one permutation per (client, epoch),
    # written to slots from c * steps * size + epoch * batches * size on, all in one indexed write
    perms = [torch.randperm(n, generator=generator) for n, generator in zip(sizes, generators) for _ in range(epochs)]
    if perms:
        lengths = torch.tensor([n for n in sizes for _ in range(epochs)])
        starts = torch.tensor([c * steps * size + epoch * batches * size
                               for c, batches in enumerate(per_epoch) for epoch in range(epochs)])
        first = torch.cumsum(lengths, 0) - lengths  # each permutation's first position in the concatenation
        slots = torch.repeat_interleave(starts - first, lengths) + torch.arange(int(lengths.sum()))
        rows[slots] = torch.cat(perms)
    rows = rows.view(len(sizes), steps, size)
    real = rows >= 0
    offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0).view(-1, 1, 1)
    rows = torch.where(real, rows + offsets, offsets)  # padding: any real row of this client, masked out
    mask = real.float()
    return Schedule(rows.transpose(0, 1), mask.transpose(0, 1), real.sum(-1).transpose(0, 1))


def _objectives(model: nn.Module, cfg: LocalTraining, classification: bool, anchor: dict[str, torch.Tensor]):
    """Every client's step objective on its padded batch, with its mean task loss and correct predictions.
    Clients share no parameters, so the gradient of the objectives' sum is each client's own gradient."""

    def one_client(params, x, y, mask):
        outputs = functional_call(model, params, (x,))
        denominator = mask.sum().clamp(min=1.0)
        if classification:
            # cross-entropy's own terms (F.cross_entropy under vmap runs a Python decomposition: twice as slow)
            per_example = -class_log_softmax(outputs).gather(1, y.unsqueeze(1)).squeeze(1)
            correct = ((outputs.argmax(1) == y).float() * mask).sum()
        else:
            per_example = (outputs.squeeze(-1) - y).pow(2)
            correct = mask.new_zeros(())
        loss = (per_example * mask).sum() / denominator
        total = loss
        if cfg.loss == "fedld-margin":
            squared = torch.softmax(outputs, dim=1).pow(2)
            penalty = torch.log1p((squared * mask[:, None]).sum()) if cfg.margin_reduction == "batch" else \
                (torch.log1p(squared.sum(1)) * mask).sum() / denominator
            total = total + cfg.margin_lambda * penalty
        if cfg.proximal_mu > 0:
            total = total + cfg.proximal_mu / 2 * sum((params[k] - anchor[k]).pow(2).sum() for k in params)
        return total, loss.detach(), correct.detach()

    return vmap(one_client)


def stacked(start: dict[str, torch.Tensor], clients: int) -> dict[str, torch.Tensor]:
    """One copy of every parameter per client, along a new leading client axis."""
    return {name: p.unsqueeze(0).repeat(clients, *([1] * p.dim())) for name, p in start.items()}


def shared(start: dict[str, torch.Tensor], clients: int) -> dict[str, torch.Tensor]:
    """Every client's parameters before its first step: `start` seen along a leading client axis (no copies: a
    stacked forward then reads one set of weights, warm in cache, for every client)."""
    return {name: p.unsqueeze(0).expand(clients, *p.shape) for name, p in start.items()}


def rows_laid_out_as(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The rows of a (rows, n) matrix seen as tensors of like.shape[1:] held in `like`'s per-row memory order (a
    view: writing it fills `flat`)."""
    dims = sorted(range(1, like.dim()), key=like.stride, reverse=True)  # outermost in memory first
    shaped = flat.view(len(flat), *(like.shape[d] for d in dims))
    return shaped.permute(0, *(1 + dims.index(d) for d in range(1, like.dim())))


def laid_out_like(gradient: torch.Tensor, rows: int) -> torch.Tensor:
    """An empty (rows, *gradient.shape[1:]) tensor whose rows have `gradient`'s memory layout: a vmapped linear
    layer's weight gradient comes out transposed, and an in-place step on mismatched strides is not vectorised
    (bench-w1's 100 clients: ~0.5-0.9 vs 0.13 ms a step)."""
    return rows_laid_out_as(gradient.new_empty((rows, math.prod(gradient.shape[1:]))), gradient)


def own_copies(start: dict[str, torch.Tensor], gradients: dict[str, torch.Tensor], clients: int
               ) -> dict[str, torch.Tensor]:
    """Every client's own copy of `start`, laid out as its gradient is: copied from one row in that layout (a
    transposing copy for every client is ~10x slower: 0.3 vs 0.03 ms for 100 of bench-w1's 64x64 weights)."""
    out = {}
    for name, gradient in gradients.items():
        row = laid_out_like(gradient, 1).copy_(start[name])
        out[name] = laid_out_like(gradient, clients).copy_(row.expand(clients, *row.shape[1:]))
    return out


def stacked_clients(params: dict[str, torch.Tensor], stats: list[Stats]) -> StackedClients:
    """The trained stack (detached) with every client's stats."""
    return StackedClients([{name: p.detach() for name, p in params.items()}], stats)


class Optimizer:
    """torch.optim.SGD / Adam's update, in place on stacked parameters; clients not `active` are left as they are
    (parameters and state)."""

    def __init__(self, cfg: LocalTraining) -> None:
        self.cfg, self.steps = cfg, 0
        self.state: dict[str, list[torch.Tensor]] = {}

    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], active: torch.Tensor | None = None
             ) -> None:
        """One update of `params` (the first len(params) clients of those the first step saw: a prefix keeps its
        optimizer state's rows) from `grads`; with `active`, clients where it is False are left as they are."""
        cfg, everyone = self.cfg, active is None or bool(active.all())
        self.steps += 1
        for name, p in params.items():
            g = grads[name]
            if cfg.weight_decay:
                g = g.add(p, alpha=cfg.weight_decay)
            keep = None if everyone else active.view(-1, *([1] * (p.dim() - 1)))
            if cfg.optimizer == "adam":
                direction, rate = self._adam(name, g, keep), 1.0
            else:  # SGD's step as torch.optim.SGD takes it: param.add_(direction, alpha=-lr)
                direction, rate = (self._momentum(name, g, keep) if cfg.momentum else g), cfg.lr
            if keep is None:
                p.add_(direction, alpha=-rate)
            else:
                p.copy_(torch.where(keep, p.add(direction, alpha=-rate), p))

    def _momentum(self, name: str, g: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        if name not in self.state:  # torch.optim.SGD: the first step's buffer is the gradient itself
            self.state[name] = [g.clone()]
            return self.state[name][0]
        buf = self.state[name][0][: len(g)]
        if keep is None:
            buf.mul_(self.cfg.momentum).add_(g)
        else:
            buf.copy_(torch.where(keep, buf * self.cfg.momentum + g, buf))
        return buf

    def _adam(self, name: str, g: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        beta1, beta2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults (fedsim sets only lr, weight_decay)
        if name not in self.state:
            self.state[name] = [torch.zeros_like(g), torch.zeros_like(g)]
        m, v = (s[: len(g)] for s in self.state[name])
        m_new, v_new = m.lerp(g, 1 - beta1), v.mul(beta2).addcmul_(g, g, value=1 - beta2)
        if keep is not None:
            m_new, v_new = torch.where(keep, m_new, m), torch.where(keep, v_new, v)
        m.copy_(m_new)
        v.copy_(v_new)
        step_size = self.cfg.lr / (1 - beta1 ** self.steps)
        denominator = (v.sqrt() / math.sqrt(1 - beta2 ** self.steps)).add_(eps)
        return m / denominator * step_size


# A client's batch step above this many activations (floats) is compute-bound on a CPU: stacking clients saves no
# per-operation overhead there, and the stacked copies fall out of cache. Measured with one torch thread
# (`DEVICE=cpu bash benchmarks/gpu_check.sh`, `make bench`): bench-w3's CNN on 8x8 digits (~230k a step) trains
# 1.3x faster vectorised, bench-w4's CNN on 32x32 images (~2.0M) 1.1x slower (1.3-1.4x before fedsim.allocator).
CPU_STEP_ACTIVATIONS = 2**20


def pays_off(model: nn.Module, sample: torch.Tensor, batch_size: int, device_type: str) -> bool:
    """Whether training clients together is faster than one by one: on a GPU always, on a CPU while a client's
    batch step is small (CPU_STEP_ACTIVATIONS)."""
    return device_type != "cpu" or activations_per_example(model, sample) * batch_size <= CPU_STEP_ACTIVATIONS


def bytes_per_client(model: nn.Module, sample: torch.Tensor, cfg: LocalTraining, per_example: bool = False) -> int:
    """A client's share of a vectorised step: parameters, gradients, optimizer state and update temporaries,
    plus its batch's activations (measured by one forward pass of one example, kept twice for the backward), and
    with `per_example` (DP-SGD) a gradient per example of the batch and its clipped copy."""
    n_params = sum(p.numel() for p in model.parameters())
    copies = 4 + (2 if cfg.optimizer == "adam" else 1 if cfg.momentum else 0) + (1 if cfg.weight_decay else 0)
    if per_example:
        copies += 2 * cfg.batch_size
    activations = activations_per_example(model, sample)
    return 4 * (n_params * copies + 3 * activations * cfg.batch_size + sample[:1].numel() * cfg.batch_size)


def chunk_size(model: nn.Module, sample: torch.Tensor, cfg: LocalTraining, memory_mb: float,
               per_example: bool = False) -> int:
    """How many clients one vectorised chunk holds within `memory_mb` (at least one)."""
    return max(1, int(memory_mb * 2**20 // bytes_per_client(model, sample, cfg, per_example)))


def train_stacked(model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]], cfg: LocalTraining, task: str,
                 generators: list[torch.Generator], memory_mb: float,
                 augmentations: list[torch.Generator] | None = None) -> StackedClients:
    """Train one copy of `model` (its current weights) per client on that client's (x, y), all at once; returns
    every client's final state (stacked) and training stats, as `train_locally` would have left them one by one
    (`augmentations`: each client's generator of the data's random transforms, fedsim.inputs)."""
    if not data:
        return StackedClients([], [])
    results: list[StackedClients] = []
    sample = next((x for x, _ in data if len(x)), data[0][0])
    size = chunk_size(model, sample, cfg, memory_mb) if len(sample) else len(data)
    augmentations = augmentations or [None] * len(data)
    for start in range(0, len(data), size):
        end = start + size
        results.append(_train_chunk(model, data[start:end], cfg, task, generators[start:end],
                                    augmentations[start:end]))
    return StackedClients.joined(results)


def _train_chunk(model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]], cfg: LocalTraining, task: str,
                 generators: list[torch.Generator], augmentations: list[torch.Generator | None]
                 ) -> StackedClients:
    """Clients with more steps first: the clients still training at step t are then the stack's first rows (a
    view), so a step costs what its active clients cost, not the longest client's cohort (partitions of unequal
    sizes)."""
    classification = task == "classification"
    start = {name: p.detach() for name, p in model.named_parameters()}
    plan = schedule([len(x) for x, _ in data], cfg, generators)
    clients = len(data)
    weights, steps = plan.counts.sum(0), (plan.counts > 0).sum(0)  # each client's examples and steps, in its order
    order = torch.argsort(steps, descending=True, stable=True)
    reordered = not torch.equal(order, torch.arange(clients))
    if reordered:
        plan = Schedule(plan.rows[:, order], plan.mask[:, order], plan.counts[:, order])
        augmentations = [augmentations[c] for c in order.tolist()]
    x_all = torch.cat([x for x, _ in data])
    y_all = torch.cat([y for _, y in data])
    rows, mask = plan.rows.to(x_all.device), plan.mask.to(x_all.device)
    params = shared(start, clients)
    objectives = _objectives(model, cfg, classification, start)
    optimizer = Optimizer(cfg)
    loss_sum = torch.zeros(clients, dtype=torch.float64, device=x_all.device)
    correct = torch.zeros(clients, dtype=torch.float64, device=x_all.device)
    counts = plan.counts.to(x_all.device)
    active = (plan.counts > 0).sum(1).tolist()  # clients still training at each step: the first active[t]
    for t, k in enumerate(active):
        with torch.enable_grad():
            leaves = {name: p[:k].detach().requires_grad_() for name, p in params.items()}
            x = x_all[rows[t, :k]]
            if augmentations[0] is not None:
                x = augment_stack(model, x, plan.counts[t, :k].tolist(), augmentations[:k])
            total, loss, hits = objectives(leaves, x, y_all[rows[t, :k]], mask[t, :k])
            grads = dict(zip(leaves, torch.autograd.grad(total.sum(), list(leaves.values()))))
        with torch.no_grad():
            if t == 0:  # each client's own copy from its first step on, laid out as its gradients are
                params = own_copies(start, grads, clients)
            optimizer.step({name: p[:k] for name, p in params.items()}, grads)
        loss_sum[:k] += loss.double() * counts[t, :k]
        correct[:k] += hits.double()
    if not active:  # nobody trained
        params = stacked(start, clients)
    if reordered:  # back to the clients' order
        back = torch.argsort(order).to(x_all.device)
        params = {name: p[back] for name, p in params.items()}
        loss_sum, correct = loss_sum[back], correct[back]
    losses, hits, weights, steps = loss_sum.tolist(), correct.tolist(), weights.tolist(), steps.tolist()
    stats = [Stats(losses[c], weights[c], round(hits[c]), steps[c]) for c in range(clients)]
    return stacked_clients(params, stats)
