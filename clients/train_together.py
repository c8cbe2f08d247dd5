"""The vectorised form of `fedsim.clients.app.train`: a round's train messages that share one content (the
global model and its config) trained together, one reply per message as `train` makes it.

`prepare` decided that the run's clients train together (fedsim.server.decide_vectorize); this handler trains
them: plain local training (task loss, FedLD's margin loss, FedProx's proximal term; SGD or Adam) with
`fedsim.stacked`, a feature's training with its `train_together` (DP-SGD: fedsim.features.dp_sgd). It raises
rather than declines: the runtime then reruns the messages one by one, so each failure is its own error reply.
"""

from __future__ import annotations

import torch
from flwr.app import ConfigRecord, Context, Message

from fedsim import features
from fedsim import protocol as p
from fedsim.clients.app import partition_of, received_loss, round_setup, train_reply, train_seed
from fedsim.clients.workspace import workspace
from fedsim.features import ClientJob
from fedsim.features.base import StackedTrainingFeature
from fedsim.inputs import augmentation_generator
from fedsim.stacked import train_stacked


def train_together(messages: list[Message], contexts: list[Context]) -> list[Message]:
    """Replies to `messages` (train messages sharing one content object, each with its node's context), in order."""
    ws = workspace(contexts[0])
    config: ConfigRecord = messages[0].content[p.CONFIG]
    setup = round_setup(ws, config, ws.load_global(messages[0].content[p.ARRAYS]))
    jobs = [ClientJob(pid, x, y, train_seed(ws, config, pid), context.state)
            for context, (pid, x, y) in zip(contexts, (partition_of(c, ws, config) for c in contexts))]
    metrics = [received_loss(config, setup.model, job.x, job.y, ws.task) for job in jobs]
    feature, settings = features.client_trainer(config)
    if isinstance(feature, StackedTrainingFeature):
        trained = feature.train_together(settings, setup, jobs)
    elif feature is not None:  # prepare keeps such runs one by one (not_vectorizable)
        raise TypeError(f"{feature.name} has no vectorised trainer")
    else:
        generators = [torch.Generator().manual_seed(job.seed) for job in jobs]
        results = train_stacked(setup.model, [(job.x, job.y) for job in jobs], setup.local, ws.task, generators,
                                setup.memory_mb, [augmentation_generator(job.seed) for job in jobs])
        trained = [(r.state, r.stats.metrics(accuracy=ws.task == "classification")) for r in results]
    replies = [train_reply(msg, config, state, {**m, **extra}, len(job.x))
               for msg, (state, extra), m, job in zip(messages, trained, metrics, jobs)]
    ws.release()
    return replies
