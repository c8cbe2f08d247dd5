"""From the history store: FedAvg of the stored round-1 updates without the client, then at each stored round the
remaining clients train ⌈r·E⌉ epochs and each layer's new mean update is rescaled to the stored update's norm.

FedEraser (client requests). The calibration rounds are ordinary `train` messages from the recalibrated model
to the clients stored for that round (minus the forgotten ones), `ratio` = r of the local epochs E.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from flwr.app import Message, RecordDict
from flwr.serverapp.strategy import Strategy
from pydantic import Field

from fedsim import protocol as p
from fedsim.arrays import state_to_record
from fedsim.errors import FedsimError
from fedsim.unlearning.methods.base import Job, Method, MethodSettings, Result, Session

State = dict[str, torch.Tensor]


class FedEraserSettings(MethodSettings):
    ratio: float = Field(0.5, gt=0, le=1)  # calibration clients train ceil(ratio * client.local_epochs) epochs


def mean_update(updates: Iterable[tuple[State, int]]) -> State:
    """Example-weighted mean of (update, num_examples) pairs, accumulated in float64."""
    updates = list(updates)
    total = sum(n for _, n in updates)
    return {k: sum(u[k].double() * (n / total) for u, n in updates).float() for k in updates[0][0]}


def calibrate(new: State, old: State) -> State:
    """FedEraser: per layer, the new update's direction with the old update's norm."""
    out = {}
    for k, u in new.items():
        norm = u.norm()
        out[k] = u * (old[k].norm() / norm) if norm > 0 else old[k].clone()
    return out


def serve(session: Session, job: Job, strategy: Strategy) -> Result:
    """Calibrated retraining from the stored rounds, without the target client."""
    target, store = job.request.target, session.store
    stored = [t for t in (store.rounds() if store else []) if t <= job.request.at_round]
    if not stored:
        raise FedsimError("unlearning", "federaser needs the history store, which holds no rounds",
                          "keep the history store (it is on whenever [unlearning] is set)")
    epochs = math.ceil(session.method_settings("federaser").ratio * session.local.local_epochs)
    keep = job.before.clients | {target}

    def old_update(t: int) -> tuple[dict[int, tuple[State, int]], State | None]:
        updates = {pid: u for pid, u in store.updates(t).items() if pid not in keep}
        return updates, (mean_update(updates.values()) if updates else None)

    arrays_state = store.global_model(stored[0])
    _, first = old_update(stored[0])
    if first is not None:
        arrays_state = {k: v + first[k] for k, v in arrays_state.items()}
    for t in stored[1:]:
        updates, old = old_update(t)
        if old is None:
            continue
        config = session.config_without(job.now)
        config.update({p.SERVER_ROUND: t, p.LOCAL_EPOCHS: epochs})
        content = RecordDict({p.ARRAYS: state_to_record(arrays_state), p.CONFIG: config})
        messages = [Message(content, dst_node_id=session.nodes[pid], message_type=p.TRAIN) for pid in updates]
        replies = [m for m in job.grid.send_and_receive(messages, timeout=session.timeout) if not m.has_error()]
        if not replies:
            continue
        new = mean_update([({k: v - arrays_state[k] for k, v in m.content[p.ARRAYS].to_torch_state_dict().items()},
                            int(m.content[p.METRICS][p.NUM_EXAMPLES])) for m in replies])
        step = calibrate(new, old)
        arrays_state = {k: v + step[k] for k, v in arrays_state.items()}
    return Result(state_to_record(arrays_state), len(stored) - 1)


METHOD = Method("federaser", __doc__, serve, kinds=frozenset({"client"}), settings=FedEraserSettings, position=5)
