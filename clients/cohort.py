"""The vectorised form of `fedsim.clients.app.train`: a round's train messages that share one content (the
global model and its config) trained together by `fedsim.cohort`, one reply per message as `train` makes it.

It applies to plain local training (task loss, FedLD's margin loss, FedProx's proximal term; SGD or Adam) of a
model without running statistics; DP-SGD and bag-level training go one by one (`train_cohort` returns None).
"""

from __future__ import annotations

import torch
from fedsim.clients.app import partition_of, received_loss, train_reply, train_seed
from fedsim.clients.workspace import workspace
from flwr.app import ConfigRecord, Context, Message

from fedsim import protocol as p
from fedsim.cohort import train_cohort as train_together
from fedsim.cohort import unsupported_model
from fedsim.protocol import BagSettings, DPSGDSettings, LocalTraining


def applies(config: ConfigRecord) -> bool:
    """Whether a train config asks for training the cohort engine does (not DP-SGD, not bags)."""
    return DPSGDSettings.from_config(config) is None and BagSettings.from_config(config) is None


def train_cohort(messages: list[Message], contexts: list[Context]) -> list[Message] | None:
    """Replies to `messages` (train messages sharing one content object, each with its node's context), in
    order; None when they cannot be trained together (the caller runs them one by one)."""
    if not messages or any(m.metadata.message_type != p.TRAIN for m in messages):
        return None
    ws = workspace(contexts[0])
    config: ConfigRecord = messages[0].content[p.CONFIG]
    if not applies(config) or unsupported_model(ws.model) is not None:
        return None
    model = ws.load_global(messages[0].content[p.ARRAYS])
    local = LocalTraining.from_config(config)
    data, generators, metrics = [], [], []
    for context in contexts:
        pid, x, y = partition_of(context, ws, config)
        data.append((x, y))
        generators.append(torch.Generator().manual_seed(train_seed(ws, config, pid)))
        metrics.append(received_loss(config, model, x, y, ws.task))
    results = train_together(model, data, local, ws.task, generators, ws.spec.vectorize_memory_mb)
    classification = ws.task == "classification"
    replies = [train_reply(msg, config, r.state, {**m, **r.stats.metrics(accuracy=classification)}, len(x))
               for msg, r, m, (x, _) in zip(messages, results, metrics, data)]
    ws.release()
    return replies
