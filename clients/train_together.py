"""The vectorised form of `fedsim.clients.app.train`: a round's train messages that share one content (the
global model and its config) trained together, one reply per message as `train` makes it.

Plain local training (task loss, FedLD's margin loss, FedProx's proximal term; SGD or Adam) goes to
`fedsim.stacked`, DP-SGD to `fedsim.stacked_dp_sgd` (each client's accountant stepped as Opacus steps it, its history
kept in its context as one by one). Bag-level training and models with running statistics go one by one
(`train_together` returns None).
"""

from __future__ import annotations

import torch
from fedsim.clients import dp_sgd
from fedsim.clients.app import partition_of, received_loss, train_reply, train_seed
from fedsim.clients.workspace import Workspace, workspace
from flwr.app import ConfigRecord, Context, Message

from fedsim import protocol as p
from fedsim.protocol import BagSettings, DPSGDSettings, LocalTraining
from fedsim.stacked import TrainedClient, train_stacked, unsupported_model
from fedsim.stacked_dp_sgd import PrivateClient, train_stacked_dp_sgd


def train_together(messages: list[Message], contexts: list[Context]) -> list[Message] | None:
    """Replies to `messages` (train messages sharing one content object, each with its node's context), in
    order; None when they cannot be trained together (the caller runs them one by one)."""
    if not messages or any(m.metadata.message_type != p.TRAIN for m in messages):
        return None
    ws = workspace(contexts[0])
    config: ConfigRecord = messages[0].content[p.CONFIG]
    if BagSettings.from_config(config) is not None or unsupported_model(ws.model) is not None:
        return None
    model = ws.load_global(messages[0].content[p.ARRAYS])
    local = LocalTraining.from_config(config)
    privacy = DPSGDSettings.from_config(config)
    clients = [partition_of(context, ws, config) for context in contexts]
    metrics = [received_loss(config, model, x, y, ws.task) for _, x, y in clients]
    if privacy is None:
        generators = [torch.Generator().manual_seed(train_seed(ws, config, pid)) for pid, _, _ in clients]
        results = train_stacked(model, [(x, y) for _, x, y in clients], local, ws.task, generators,
                                 ws.spec.vectorize_memory_mb)
        classification = ws.task == "classification"
        for m, r in zip(metrics, results):
            m.update(r.stats.metrics(accuracy=classification))
    elif any(len(x) == 0 for _, x, _ in clients):
        return None  # Opacus refuses an empty dataset: one by one, that client's error reply says so
    else:
        results = _train_private(ws, config, model, local, privacy, contexts, clients, metrics)
    replies = [train_reply(msg, config, r.state, m, len(x)) for msg, r, m, (_, x, _) in zip(messages, results,
                                                                                              metrics, clients)]
    ws.release()
    return replies


def _train_private(ws: Workspace, config: ConfigRecord, model: torch.nn.Module, local: LocalTraining,
                   privacy: DPSGDSettings, contexts: list[Context], clients: list[tuple[int, torch.Tensor, torch.Tensor]],
                   metrics: list[dict[str, float]]) -> list[TrainedClient]:
    """DP-SGD for the cohort: noise, budget check and accountant as `train` has them per client; each context's
    history is written only once every client has trained (a cohort that raises is rerun one by one)."""
    dp_sgd.check_local_training(local)
    plans = []
    for context, (pid, x, _) in zip(contexts, clients):
        sigma = dp_sgd.client_noise(context.state, len(x), local, privacy)
        history = dp_sgd.load_history(context.state)
        q, steps = dp_sgd.round_plan(len(x), local)
        plans.append((sigma, history, q, steps, dp_sgd.check_budget(history, sigma, q, steps, privacy)))
    private = [PrivateClient(x, y, torch.Generator().manual_seed(train_seed(ws, config, pid)),
                             steps // local.local_epochs, sigma)
               for (pid, x, y), (sigma, _, _, steps, _) in zip(clients, plans)]
    results = train_stacked_dp_sgd(model, private, local, ws.task, privacy.max_grad_norm, ws.spec.vectorize_memory_mb)
    for context, m, r, (sigma, history, q, steps, spent) in zip(contexts, metrics, results, plans):
        after = dp_sgd.accountant_history(history, sigma, q, steps, privacy.accountant)
        dp_sgd.save_history(context.state, after, sigma)
        m.update(dp_sgd.round_metrics(r.stats, spent, after, sigma, q, steps, privacy))
    return results
