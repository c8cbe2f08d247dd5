"""The vectorised form of `fedsim.clients.app.train`: a round's train messages that share one content (the
global model and its config) trained together, one reply per message as `train` makes it.

`prepare` decided that the run's clients train together (fedsim.server.decide_vectorize); this handler trains
them: plain local training (task loss, FedLD's margin loss, FedProx's proximal term; SGD or Adam) with
`fedsim.stacked`, a feature's training with its `train_together` (DP-SGD: fedsim.features.dp_sgd). It raises
rather than declines: the runtime then reruns the messages one by one, so each failure is its own error reply.

With a `Reduction` (fedsim.reduction: the strategy allows it, fedsim.strategies.early) the cohort's arrays leave
as one partial result computed here, on the device it trained on; each member's reply carries only its metrics.
"""

from __future__ import annotations

import torch
from flwr.app import ConfigRecord, Context, Message

from fedsim import features
from fedsim import protocol as p
from fedsim.clients.app import partition_of, received_loss, reply_metrics, round_setup, train_reply, train_seeds
from fedsim.clients.workspace import workspace
from fedsim.features import ClientJob
from fedsim.features.base import StackedTrainingFeature
from fedsim.inputs import augmentation_generator, pipeline_of
from fedsim.reduction import Partial, Reduction, metrics_reply, reduce_stack, rows_of, weighted_mean
from fedsim.stacked import train_stacked


def train_together(messages: list[Message], contexts: list[Context], reduction: Reduction | None = None
                   ) -> tuple[list[Message], Partial | None]:
    """Replies to `messages` (train messages sharing one content object, each with its node's context), in order,
    and with `reduction` the cohort's partial result (the replies then carry metrics only)."""
    ws = workspace(contexts[0])
    config: ConfigRecord = messages[0].content[p.CONFIG]
    setup = round_setup(ws, config, ws.load_global(messages[0].content[p.ARRAYS]))
    partitions = [partition_of(context, ws, config) for context in contexts]
    seeds = train_seeds(ws, config, [pid for pid, _, _ in partitions])
    jobs = [ClientJob(pid, x, y, seed, context.state)
            for context, (pid, x, y), seed in zip(contexts, partitions, seeds, strict=True)]
    metrics = [received_loss(config, setup.model, job.x, job.y, ws.task) for job in jobs]
    feature, settings = features.client_trainer(config)
    if isinstance(feature, StackedTrainingFeature):
        parts, extras = feature.train_together(settings, setup, jobs)
    elif feature is not None:  # prepare keeps such runs one by one (not_vectorizable)
        raise TypeError(f"{feature.name} has no vectorised trainer")
    else:
        generators = [torch.Generator().manual_seed(job.seed) for job in jobs]
        augmentations = [augmentation_generator(job.seed) for job in jobs] if pipeline_of(setup.model) else None
        result = train_stacked(setup.model, [(job.x, job.y) for job in jobs], setup.local, ws.task, generators,
                               setup.memory_mb, augmentations)
        parts, extras = result.parts, [s.metrics(accuracy=ws.task == "classification") for s in result.stats]
    metrics = [reply_metrics(config, {**m, **extra}, len(job.x)) for m, extra, job in zip(metrics, extras, jobs)]
    partial = None
    if reduction is None:
        replies = [train_reply(msg, {k: parts[p][k][r] for k in parts[p]}, m)
                   for (p, r), msg, m in zip(rows_of(parts), messages, metrics, strict=True)]
    else:
        start = {k: v.detach() for k, v in setup.model.state_dict().items()}  # training leaves the model as sent
        nodes = [m.metadata.dst_node_id for m in messages]
        weights = [float(m[reduction.weighted_by_key]) for m in metrics]
        partial = reduce_stack(reduction, nodes, weights, parts, start)
        partial.metrics = weighted_mean(nodes, metrics, weights, reduction.weighted_by_key)
        replies = [metrics_reply(msg, m) for msg, m in zip(messages, metrics)]
    ws.release()
    return replies, partial
