"""Early reduction: a group of clients trained together (one vectorised cohort, inline or on one Ray actor) sends
the server its contribution to the aggregate, computed where it trained, instead of one serialised model per client.

What a group sends depends on the strategy (`Reduction.kind`; which strategies allow it: fedsim.strategies.early):
- MEAN: the members' weighted mean state and their total weight, for strategies whose aggregation is a weighted
  mean of the replies' arrays (Flower's FedAvg family): a weighted mean of group means is the mean of all;
- CLIPPED_SUM: the sum of the members' updates each clipped to a norm, and every update's norm (DP-FedAvg);
- STACK: every member's state, stacked along a leading client axis (FedLD's principal gradients, the unlearning
  history store): one tensor per state entry instead of one record per client.
Each member still gets its own reply with its metrics (accountants, fault counts, callbacks see every client);
only the arrays travel per group. The same functions reduce on the server the replies of clients that ran one
by one, so every strategy aggregates one kind of input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flwr.app import Message, RecordDict
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency

from fedsim import protocol
from fedsim._flower import metric_record, reply_with
from fedsim.arrays import state_to_record

if TYPE_CHECKING:  # torch loads with the first partial result, not with a scenario's validation (the registry's
    import torch  # strategies name these kinds)

MEAN, CLIPPED_SUM, STACK = "mean", "clipped-sum", "stack"


@dataclass(frozen=True)
class Reduction:
    """What a group of clients trained together sends instead of one model per client."""

    kind: str  # MEAN, CLIPPED_SUM or STACK
    weighted_by_key: str = protocol.NUM_EXAMPLES  # the reply metric that weighs a client
    clipping_norm: float = 0.0  # CLIPPED_SUM: every update is clipped to this L2 norm (relative to the global model)


@dataclass
class Partial:
    """A group's contribution: MEAN: the weighted mean state; STACK: every member's state (m, ...); CLIPPED_SUM: the
    float64 sum of the clipped updates. `nodes` and `weights` are the members' node ids and weights, in order."""

    kind: str
    nodes: list[int]
    weights: list[float]
    arrays: dict[str, torch.Tensor]
    norms: list[float] = field(default_factory=list)  # CLIPPED_SUM: each member's update norm before clipping
    metrics: dict[str, float] = field(default_factory=dict)  # the members' weighted-mean reply metrics (MEAN)

    @property
    def total(self) -> float:
        return float(sum(self.weights))

    def cpu(self) -> Partial:
        """This partial with its tensors in host memory (to leave a Ray actor)."""
        return Partial(self.kind, self.nodes, self.weights, {k: v.cpu() for k, v in self.arrays.items()}, self.norms,
                       self.metrics)


def weighted_mean(nodes: list[int], metrics: list[dict[str, float]], weights: list[float], weighted_by_key: str
                  ) -> dict[str, float]:
    """Every reply metric's weighted mean over the members (the weight itself left out), as Flower's
    aggregate_metricrecords computes it (in node order, each value times its share, summed one after another)."""
    total = sum(weights)
    order = sorted(range(len(nodes)), key=nodes.__getitem__)
    return {key: sum(metrics[i][key] * (weights[i] / total) for i in order) for key in metrics[0]
            if key != weighted_by_key}


def rows_of(parts: list[dict[str, torch.Tensor]]) -> list[tuple[int, int]]:
    """(part, row) of every member of a stack held in parts (consecutive members, each part stacked along dim 0)."""
    return [(p, r) for p, part in enumerate(parts) for r in range(len(next(iter(part.values()))))]


FLAT_MEAN_ELEMENTS = 2**20  # up to this many entries a member, its state is averaged as one flat vector (one
# addition per member instead of one per entry and member: small models are dominated by the call overhead)


def weighted_mean_state(nodes: list[int], weights: list[float], parts: list[dict[str, torch.Tensor]]
                        ) -> dict[str, torch.Tensor]:
    """The members' weighted mean state, with Flower's arithmetic (aggregate_arrayrecords): in node order (the order
    replies reach a strategy), each state times its share w / total in the state's own type (float64 for integer
    entries), summed one after another. A whole round's cohort therefore gives Flower's mean of the per-client
    replies bit for bit; cohorts on several workers, that mean within float rounding. Elementwise, so a small state
    is averaged as one flat vector (the same bits); a large one entry by entry, without copying the stack."""
    import torch

    total = sum(weights)
    order = sorted(range(len(nodes)), key=nodes.__getitem__)
    first = parts[0]
    dtypes = {t.dtype for t in first.values()}
    per_member = sum(t[0].numel() for t in first.values())
    if len(dtypes) == 1 and next(iter(dtypes)).is_floating_point and per_member <= FLAT_MEAN_ELEMENTS:
        return _ordered_flat_mean(parts, weights, total, order)
    where, out = rows_of(parts), {}
    for key, t in first.items():
        dtype = t.dtype if t.is_floating_point() else torch.float64
        out[key] = _ordered_mean(lambda i, key=key: parts[where[i][0]][key][where[i][1]], weights, total, order, dtype)
    return out


def _ordered_flat_mean(parts: list[dict[str, torch.Tensor]], weights: list[float], total: float, order: list[int]
                       ) -> dict[str, torch.Tensor]:
    """The mean state of `_ordered_mean`'s arithmetic for small states, as flat vectors: every member's products
    w_i / total * state written in one pass into one (members, entries) matrix, entry by entry, then its rows added
    one after another in `order`: the same bits, with one operation per member instead of two (100 members of
    bench-w1's MLP: ~0.8 vs ~1.6 ms). An entry keeps the first part's memory layout there (a stacked linear weight
    is transposed: fedsim.stacked), so nothing is transposed on the way; its mean comes out in that layout."""
    import torch

    from fedsim.stacked import rows_laid_out_as

    first = next(iter(parts[0].values()))
    widths = [t[0].numel() for t in parts[0].values()]
    products = torch.empty((len(weights), sum(widths)), dtype=first.dtype, device=first.device)
    shares = torch.tensor([w / total for w in weights], dtype=first.dtype, device=first.device)
    row = 0
    for part in parts:
        members = len(next(iter(part.values())))
        column = 0
        for t, like, width in zip(part.values(), parts[0].values(), widths):
            torch.mul(t, shares[row : row + members].view(-1, *[1] * (t.dim() - 1)),
                      out=rows_laid_out_as(products[row : row + members, column : column + width], like))
            column += width
        row += members
    acc = products[order[0]].clone()
    for i in order[1:]:
        acc.add_(products[i])
    return {key: rows_laid_out_as(piece.unsqueeze(0), like)[0]
            for (key, like), piece in zip(parts[0].items(), acc.split(widths))}


def _ordered_mean(row, weights: list[float], total: float, order: list[int], dtype) -> torch.Tensor:
    """sum over `order` of row(i) * (w_i / total), each product rounded in `dtype`, added one after another."""
    import torch

    shares = torch.tensor([weights[i] / total for i in order], dtype=dtype, device=row(order[0]).device)
    acc = row(order[0]).to(dtype) * shares[0]
    buffer = torch.empty_like(acc)
    for share, i in zip(shares[1:], order[1:]):
        acc.add_(torch.mul(row(i).to(dtype), share, out=buffer))
    return acc


def clipped_sum(clipping_norm: float, parts: list[dict[str, torch.Tensor]], global_state: dict[str, torch.Tensor]
                ) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The float64 sum of the members' updates (state - global), each scaled by min(1, C / its L2 norm) (the flat
    clipping of Flower's DP wrappers), and every norm, part by part."""
    import torch

    summed, norms = {}, []
    for part in parts:
        device = next(iter(part.values())).device
        updates = {k: s.double() - global_state[k].to(device).double() for k, s in part.items()}
        norm = sum(u.flatten(1).pow(2).sum(1) for u in updates.values()).sqrt()
        factor = (clipping_norm / norm.clamp(min=1e-300)).clamp(max=1.0)
        for k, u in updates.items():
            term = torch.tensordot(factor, u, dims=1)
            summed[k] = term if k not in summed else summed[k] + term.to(summed[k].device)
        norms += norm.tolist()
    return summed, norms


def reduce_stack(reduction: Reduction, nodes: list[int], weights: list[float], parts: list[dict[str, torch.Tensor]],
                 global_state: dict[str, torch.Tensor] | None = None) -> Partial:
    """The partial of members whose trained states are held in `parts` (consecutive members, each part stacked along
    dimension 0; `global_state`: the model they started from, for CLIPPED_SUM); a cohort adds its members'
    `metrics` (weighted_mean)."""
    import torch

    if reduction.kind == STACK:
        states = parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        return Partial(STACK, nodes, weights, states)
    if reduction.kind == MEAN:
        return Partial(MEAN, nodes, weights, weighted_mean_state(nodes, weights, parts))
    if reduction.kind == CLIPPED_SUM:
        summed, norms = clipped_sum(reduction.clipping_norm, parts, global_state)
        return Partial(CLIPPED_SUM, nodes, weights, summed, norms)
    raise ValueError(f"unknown reduction {reduction.kind!r}")


def stacked_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-client state dicts as one stack per entry."""
    import torch

    return {key: torch.stack([s[key] for s in states]) for key in states[0]}


def split_replies(replies: Iterable[Message], partials: list[Partial], weighted_by_key: str
                  ) -> tuple[list[Message], list[Message]]:
    """(every reply without an error, the ones that carry their own arrays: clients outside every partial, checked
    as Flower's strategies check replies: one ArrayRecord and one MetricRecord with `weighted_by_key` each). The
    reduced members' replies are fedsim's own (fedsim.clients.train_together)."""
    covered = {n for p in partials for n in p.nodes}
    good = [m for m in replies if not m.has_error()]
    own = [m for m in good if m.metadata.src_node_id not in covered]
    if own:
        validate_message_reply_consistency([m.content for m in own], weighted_by_key, check_arrayrecord=True)
    return good, own


def partial_of_replies(replies: list[Message], reduction: Reduction,
                       global_state: dict[str, torch.Tensor] | None = None) -> Partial:
    """What a group of these per-client replies (at least one, each with its arrays) would have sent."""
    states = stacked_states([next(iter(m.content.array_records.values())).to_torch_state_dict() for m in replies])
    weights = [float(next(iter(m.content.metric_records.values()))[reduction.weighted_by_key]) for m in replies]
    return reduce_stack(reduction, [m.metadata.src_node_id for m in replies], weights, [states], global_state)


def merged(partials: list[Partial]) -> Partial:
    """STACK or CLIPPED_SUM partials as one, members in node order (the order per-client replies come in)."""
    import torch

    nodes = [n for p in partials for n in p.nodes]
    order = sorted(range(len(nodes)), key=nodes.__getitem__)
    weights = [w for p in partials for w in p.weights]
    norms = [x for p in partials for x in p.norms]
    if partials[0].kind == STACK:
        arrays = {}
        for key in partials[0].arrays:
            device = partials[0].arrays[key].device
            stack = torch.cat([p.arrays[key].to(device) for p in partials])
            arrays[key] = stack if order == sorted(order) else stack[torch.tensor(order, device=device)]
    else:
        arrays = {key: sum(p.arrays[key].to(partials[0].arrays[key].device) for p in partials)
                  for key in partials[0].arrays}
    return Partial(partials[0].kind, [nodes[i] for i in order], [weights[i] for i in order], arrays,
                   [norms[i] for i in order] if norms else [])


def group_message(partial: Partial, arrayrecord_key: str, weighted_by_key: str) -> Message:
    """A MEAN partial as the one reply Flower's weighted-mean strategies aggregate it as: its mean state, weighted by
    its members' total weight, with its members' weighted-mean metrics (the keys every reply carries)."""
    metrics = metric_record({**partial.metrics, weighted_by_key: partial.total})
    content = RecordDict({arrayrecord_key: state_to_record(partial.arrays), protocol.METRICS: metrics})
    return Message(content=content, dst_node_id=0, message_type=protocol.TRAIN)


def metrics_reply(msg: Message, metrics: dict[str, float]) -> Message:
    """A reduced client's own reply: its metrics (its arrays are in its group's partial)."""
    return reply_with(msg, {protocol.METRICS: metric_record(metrics)})


@dataclass(frozen=True)
class EarlyReduction:
    """How the round loop asks for partial results and aggregates them (fedsim.strategies.early.EARLY)."""

    plan: Callable[[Any, int], Reduction | None]  # (strategy, round) -> what cohorts send (None: a reply each)
    aggregate: Callable[[Any, int, list[Message], list[Partial]], tuple]  # -> aggregate_train's result
