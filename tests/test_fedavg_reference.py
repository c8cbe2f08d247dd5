"""FedAvg through fedsim (Flower's FedAvg, InlineGrid, ClientApp) == a hand-written PyTorch FedAvg loop."""

from __future__ import annotations

import torch
from conftest import small_scenario

import fedsim
from fedsim.data import federated_data
from fedsim.models import initial_model
from fedsim.seeding import derive_seed


def hand_written_fedavg(scenario) -> dict[str, torch.Tensor]:
    """Plain PyTorch: same partitions, initial weights and batch order; example-weighted average."""
    data = federated_data(scenario.data, scenario.run.seed)
    global_model = initial_model(scenario.model, data.info, scenario.run.seed)
    c = scenario.client
    for rnd in range(1, scenario.run.rounds + 1):
        states, sizes = [], []
        for pid in range(data.num_partitions):
            x, y = data.partition(pid)
            model = initial_model(scenario.model, data.info, 0)
            model.load_state_dict(global_model.state_dict())
            opt = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
            g = torch.Generator().manual_seed(derive_seed(scenario.run.seed, rnd, pid))
            for _ in range(c.local_epochs):
                order = torch.randperm(len(x), generator=g)
                for i in range(0, len(x), c.batch_size):
                    idx = order[i : i + c.batch_size]
                    loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            states.append(model.state_dict())
            sizes.append(len(x))
        total = sum(sizes)
        averaged = {k: sum(s[k].double() * n / total for s, n in zip(states, sizes)).float() for k in states[0]}
        global_model.load_state_dict(averaged)
    return global_model.state_dict()


def test_fedavg_matches_hand_written_loop(tmp_path):
    scenario = small_scenario(run__rounds=3, client__local_epochs=2, client__momentum=0.9,
                              data__partitioner__name="dirichlet", data__partitioner__alpha=0.5,
                              data__partitioner__min_partition_size=5)
    result = fedsim.run(scenario, out=tmp_path / "run")
    expected = hand_written_fedavg(scenario)
    assert result.state_dict.keys() == expected.keys()
    worst = max((result.state_dict[k] - expected[k]).abs().max().item() for k in expected)
    assert worst <= 1e-6, worst
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert all(torch.equal(saved[k], result.state_dict[k]) for k in saved)


def test_fedprox_term_pulls_towards_the_global_model(tmp_path):
    """With a large proximal mu (lr * mu = 0.5), local models barely move, so the global model barely changes."""
    base = small_scenario(run__rounds=1, client__local_epochs=3)
    free = fedsim.run(base, out=tmp_path / "free")
    prox = fedsim.run(base.with_overrides({"strategy.name": "fedprox", "strategy.proximal_mu": 5.0}),
                      out=tmp_path / "prox")
    start = initial_model(base.model, federated_data(base.data, base.run.seed).info, base.run.seed).state_dict()
    moved = lambda state: sum((state[k] - start[k]).norm() for k in start)  # noqa: E731
    assert moved(prox.state_dict) < 0.2 * moved(free.state_dict)
