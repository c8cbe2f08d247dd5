"""FedAvg as a plain PyTorch loop: the reference fedsim must match (tests) and the speed baseline (bench).

Same partitions, initial weights and per-(round, client) batch order as fedsim; clients weighted by examples.
`local_sgd` is also the training step of the stock-Flower baseline, so all baselines train identically.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable

import torch

from fedsim.data import federated_data
from fedsim.evaluation import evaluate
from fedsim.models import initial_model
from fedsim.scenario import ClientSection, Scenario
from fedsim.seeding import derive_seed


def local_sgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, c: ClientSection,
              generator: torch.Generator) -> None:
    """Plain mini-batch SGD with cross-entropy, shuffled by `generator` every epoch."""
    opt = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
    for _ in range(c.local_epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), c.batch_size):
            idx = order[i : i + c.batch_size]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def plain_fedavg(scenario: Scenario, on_round: Callable[[int], None] | None = None,
                 ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """SGD, classification, `strategy.fraction_train` of the clients a round (all: the same clients as fedsim;
    fewer: a seeded sample of the same size, not fedsim's), the global model evaluated on the test set after every
    round (as fedsim and stock Flower do); returns (final state_dict, final central test metrics)."""
    data = federated_data(scenario.data, scenario.run.seed)
    global_model = initial_model(scenario.model, data.info, scenario.run.seed)
    local = initial_model(scenario.model, data.info, 0)
    n = data.num_partitions
    k = max(1, int(n * scenario.strategy.fraction_train))
    for rnd in range(1, scenario.run.rounds + 1):
        states, sizes = [], []
        for pid in range(n) if k == n else sorted(random.Random(derive_seed(scenario.run.seed, rnd)).sample(range(n),
                                                                                                            k)):
            x, y = data.partition(pid)
            local.load_state_dict(global_model.state_dict())
            local_sgd(local, x, y, scenario.client, torch.Generator().manual_seed(derive_seed(scenario.run.seed, rnd,
                                                                                              pid)))
            states.append({k: v.clone() for k, v in local.state_dict().items()})
            sizes.append(len(x))
        total = sum(sizes)
        averaged = {k: sum(s[k].double() * n / total for s, n in zip(states, sizes)).float() for k in states[0]}
        global_model.load_state_dict(averaged)
        metrics = evaluate(global_model, *data.test, data.info.task)
        if on_round:
            on_round(rnd)
    return global_model.state_dict(), metrics


def timed_plain_fedavg(scenario: Scenario) -> tuple[list[float], dict[str, float]]:
    """Seconds per round and final metrics."""
    stamps = [time.perf_counter()]
    _, metrics = plain_fedavg(scenario, lambda _: stamps.append(time.perf_counter()))
    return [b - a for a, b in itertools.pairwise(stamps)], metrics
