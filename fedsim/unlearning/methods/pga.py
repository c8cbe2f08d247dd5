"""w_ref = (W·w − n_t·w_target)/(W − n_t) removes the client's last stored contribution under the strategy's own
weighting (examples, or 1 each); the client ascends its loss (`ascent_lr` 0.01, momentum 0.9, `ascent_epochs` 5,
gradient `clip` 5) projected onto the ball of radius √δ around w_ref, δ = mean over 10 random models of ‖w_ref −
w_rand‖²/3, stopping early once farther than `stop_distance` (if set) from the client's own last model; then
`rounds` ordinary rounds without it.

PGA (Halimi et al., client requests). W is the total weight of the clients stored in the target's last stored
round and n_t the target's: example counts for strategies that weight replies by examples (FedAvg and the ones
built on it), 1 each for the others (the paper's (N·w − w_target)/(N − 1)). When w is that round's aggregate,
w_ref is exactly the other clients' aggregate.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from flwr.serverapp.strategy import Strategy
from pydantic import Field

from fedsim import protocol as p
from fedsim.arrays import record_to_state, state_to_record
from fedsim.errors import FedsimError
from fedsim.seeding import derive_seed
from fedsim.unlearning.methods.base import Job, Method, MethodSettings, Result, Session
from fedsim.unlearning.methods.gradient_ascent import CLIP, RADIUS, STOP_DISTANCE, TARGET_MODEL, ascend

RANDOM_MODELS = 10  # random models averaged for the radius of the projection ball
PGA = "pga"  # the client step (gradient ascent with PGA's clip, projection and early stop)


class PGASettings(MethodSettings):
    ascent_lr: float = Field(0.01, gt=0)
    ascent_epochs: int = Field(5, ge=1)
    clip: float = Field(5.0, gt=0)  # gradient-norm clip of the ascent
    # the authors' early stop: no further ascent step once the model is farther than this (L2) from the client's own
    # last model; None: all ascent_epochs
    stop_distance: float | None = Field(None, gt=0)


def weighs_by_examples(strategy) -> bool:
    """Whether `strategy` averages replies by their example counts (Flower's FedAvg family: a
    `weighted_by_key`), unless it says it weighs clients uniformly (FedLD)."""
    return bool(getattr(strategy, "weighted_by_key", None)) and not getattr(strategy, "uniform_clients", False)


def serve(session: Session, job: Job, strategy: Strategy) -> Result:
    """Remove the target's last stored contribution, projected gradient ascent by the target within a ball
    around that reference, then ordinary rounds without it."""
    target, store = job.request.target, session.store
    last = [t for t in (store.rounds() if store else []) if t <= job.request.at_round and store.has_global(t)
            and target in store.updates(t)]
    if not last:
        raise FedsimError(f"unlearning request (client {target})",
                          "pga needs the client's stored update and the model it was sent, but the history store "
                          "has none (a model right after an earlier forgotten client's rounds is deleted)",
                          "store every round: unlearning.history_interval = 1, or use another method")
    if session.random_model is None:
        raise FedsimError("unlearning", "pga needs random models for its radius", "pass random_model=")
    stored = store.updates(last[-1])
    weight = {pid: float(n) if weighs_by_examples(strategy) else 1.0 for pid, (_, n) in stored.items()}
    total, own = sum(weight.values()), weight[target]
    sent = store.global_model(last[-1])
    w = record_to_state(job.arrays)
    w_target = {k: sent[k] + stored[target][0][k] for k in sent}
    w_ref = {k: (total * w[k] - own * w_target[k]) / (total - own) if total > own else w[k].clone() for k in w}
    distances = []
    for i in range(RANDOM_MODELS):
        rand = session.random_model(derive_seed(session.seed, job.request.at_round, i, 11))
        distances.append(sum((w_ref[k] - rand[k]).pow(2).sum() for k in w_ref
                             if torch.is_floating_point(w_ref[k])).item())
    radius = math.sqrt(sum(distances) / len(distances) / 3)
    s = session.method_settings("pga")
    local = dataclasses.replace(session.local, lr=s.ascent_lr, local_epochs=s.ascent_epochs, momentum=0.9,
                                weight_decay=0.0)
    extra, records = {CLIP: s.clip, RADIUS: radius}, {}
    if s.stop_distance is not None:
        extra[STOP_DISTANCE] = s.stop_distance
        records[TARGET_MODEL] = state_to_record(w_target)
    replies = session.client_step(job, PGA, 0, state_to_record(w_ref), local, nodes=[session.nodes[target]],
                                  extra=extra, records=records)
    arrays = replies[0].content[p.ARRAYS] if replies else state_to_record(w_ref)
    rounds, _ = session.budget("pga")
    for step in range(rounds):
        arrays = session.train_round(strategy, job.grid, arrays, session.round_number(job, step + 1), job.now)
    return Result(arrays, rounds + 1)


METHOD = Method("pga", __doc__, serve, kinds=frozenset({"client"}), client_steps={PGA: ascend}, settings=PGASettings,
                position=6)
