"""FedBN through fedsim == a hand-written loop in which every client keeps its own normalisation layers."""

from __future__ import annotations

import threading

import pytest
import torch
from plain_fedavg import local_sgd

import fedsim
from fedsim.data import federated_data
from fedsim.models import initial_model, norm_keys
from fedsim.runner import resume
from fedsim.seeding import derive_seed
from fedsim.server import Interrupted

SETTINGS = {"model__name": "cnn", "model__channels": [4], "model__batch_norm": True, "strategy__name": "fedbn",
            "data__partitioner__name": "dirichlet", "data__partitioner__alpha": 0.5,
            "data__partitioner__min_partition_size": 5, "run__rounds": 2}


def hand_written_fedbn(scenario):
    data = federated_data(scenario.data, scenario.run.seed)
    global_model = initial_model(scenario.model, data.info, scenario.run.seed)
    local = initial_model(scenario.model, data.info, 0)
    norms = norm_keys(local)
    kept: dict[int, dict[str, torch.Tensor]] = {}
    for rnd in range(1, scenario.run.rounds + 1):
        states, sizes = [], []
        for pid in range(data.num_partitions):
            x, y = data.partition(pid)
            local.load_state_dict({**global_model.state_dict(), **kept.get(pid, {})})
            local_sgd(local, x, y, scenario.client, torch.Generator().manual_seed(derive_seed(scenario.run.seed, rnd,
                                                                                              pid)))
            state = {k: v.clone() for k, v in local.state_dict().items()}
            kept[pid] = {k: state[k] for k in norms}
            states.append(state)
            sizes.append(len(x))
        total = sum(sizes)
        global_model.load_state_dict({k: sum(s[k].double() * n / total for s, n in zip(states, sizes))
                                      for k in states[0]})
    return global_model.state_dict(), kept


def test_fedbn_matches_a_hand_written_loop(tmp_path, small_scenario):
    scenario = small_scenario(**SETTINGS)
    result = fedsim.run(scenario, out=tmp_path / "run")
    expected, _ = hand_written_fedbn(scenario)
    assert {k: v.dtype for k, v in result.state_dict.items()} == {k: v.dtype for k, v in expected.items()}
    worst = max((result.state_dict[k].double() - expected[k].double()).abs().max().item() for k in expected)
    assert worst <= 1e-5, worst
    fedavg = fedsim.run(scenario.with_overrides({"strategy.name": "fedavg"}), out=tmp_path / "fedavg")
    assert max((fedavg.state_dict[k] - result.state_dict[k]).abs().max().item() for k in expected
               if k.endswith("weight")) > 1e-3  # keeping the norms local changes training


def test_fedbn_s_local_layers_survive_resume(tmp_path, small_scenario):
    scenario = small_scenario(**SETTINGS)
    stop = threading.Event()
    with pytest.raises(Interrupted):
        fedsim.run(scenario, out=tmp_path / "run", on_round=lambda row: stop.set(), stop=stop)
    resumed = resume(tmp_path / "run")
    full = fedsim.run(scenario, out=tmp_path / "full")
    assert all(torch.equal(full.state_dict[k], resumed.state_dict[k]) for k in full.state_dict)
