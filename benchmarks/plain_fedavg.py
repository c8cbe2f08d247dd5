"""FedAvg as a plain PyTorch loop: the reference fedsim must match (tests) and the speed baseline (bench).

Same partitions, initial weights and per-(round, client) batch order as fedsim; clients weighted by examples.
"""

from __future__ import annotations

import torch

from fedsim.data import federated_data
from fedsim.evaluation import evaluate
from fedsim.models import initial_model
from fedsim.scenario import Scenario
from fedsim.seeding import derive_seed


def plain_fedavg(scenario: Scenario) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Full participation, SGD, classification; returns (final state_dict, final central test metrics)."""
    data = federated_data(scenario.data, scenario.run.seed)
    global_model = initial_model(scenario.model, data.info, scenario.run.seed)
    local = initial_model(scenario.model, data.info, 0)
    c = scenario.client
    for rnd in range(1, scenario.run.rounds + 1):
        states, sizes = [], []
        for pid in range(data.num_partitions):
            x, y = data.partition(pid)
            local.load_state_dict(global_model.state_dict())
            opt = torch.optim.SGD(local.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
            g = torch.Generator().manual_seed(derive_seed(scenario.run.seed, rnd, pid))
            for _ in range(c.local_epochs):
                order = torch.randperm(len(x), generator=g)
                for i in range(0, len(x), c.batch_size):
                    idx = order[i : i + c.batch_size]
                    loss = torch.nn.functional.cross_entropy(local(x[idx]), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            states.append({k: v.clone() for k, v in local.state_dict().items()})
            sizes.append(len(x))
        total = sum(sizes)
        averaged = {k: sum(s[k].double() * n / total for s, n in zip(states, sizes)).float() for k in states[0]}
        global_model.load_state_dict(averaged)
    return global_model.state_dict(), evaluate(global_model, *data.test, data.info.task)
