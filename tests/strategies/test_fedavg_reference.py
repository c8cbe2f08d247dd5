"""FedAvg through fedsim (Flower's FedAvg, InlineGrid, ClientApp) == a hand-written PyTorch FedAvg loop
(benchmarks/plain_fedavg.py, also the speed baseline of `make bench`)."""

from __future__ import annotations

import torch
from plain_fedavg import plain_fedavg

import fedsim
from fedsim.data import federated_data
from fedsim.models import initial_model


def test_fedavg_matches_hand_written_loop(tmp_path, small_scenario):
    scenario = small_scenario(run__rounds=3, client__local_epochs=2, client__momentum=0.9,
                              data__partitioner__name="dirichlet", data__partitioner__alpha=0.5,
                              data__partitioner__min_partition_size=5)
    result = fedsim.run(scenario, out=tmp_path / "run")
    expected, _ = plain_fedavg(scenario)
    assert result.state_dict.keys() == expected.keys()
    worst = max((result.state_dict[k] - expected[k]).abs().max().item() for k in expected)
    assert worst <= 1e-6, worst
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert all(torch.equal(saved[k], result.state_dict[k]) for k in saved)


def test_fedprox_term_pulls_towards_the_global_model(tmp_path, small_scenario):
    """With a large proximal mu (lr * mu = 0.5), local models barely move, so the global model barely changes."""
    base = small_scenario(run__rounds=1, client__local_epochs=3)
    free = fedsim.run(base, out=tmp_path / "free")
    prox = fedsim.run(base.with_overrides({"strategy.name": "fedprox", "strategy.proximal_mu": 5.0}),
                      out=tmp_path / "prox")
    start = initial_model(base.model, federated_data(base.data, base.run.seed).info, base.run.seed).state_dict()
    moved = lambda state: sum((state[k] - start[k]).norm() for k in start)
    assert moved(prox.state_dict) < 0.2 * moved(free.state_dict)
