"""Stock Flower: a plain ClientApp + Flower's own FedAvg on Flower's Ray simulation runtime (`run_simulation`).

It trains exactly like the other runners (same partitions, initial weights, batch order, `local_sgd`), so all
reach the same accuracy; only the machinery around training differs.
"""

from __future__ import annotations

import itertools
import time

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from plain_fedavg import local_sgd

from fedsim.data import federated_data
from fedsim.evaluation import evaluate
from fedsim.models import build_model, initial_model
from fedsim.scenario import Scenario
from fedsim.seeding import derive_seed


def stock_flower(scenario: Scenario) -> tuple[list[float], dict[str, float]]:
    """Run the scenario (FedAvg, `strategy.fraction_train` of the clients) on stock Flower; returns seconds per round
    and final metrics."""
    n = scenario.data.partitioner.num_partitions
    client_app, server_app = ClientApp(), ServerApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        data = federated_data(scenario.data, scenario.run.seed)
        pid = int(context.node_config["partition-id"])
        x, y = data.partition(pid)
        model = build_model(scenario.model, data.info)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        rnd = int(msg.content["config"]["server-round"])
        local_sgd(model, x, y, scenario.client, torch.Generator().manual_seed(derive_seed(scenario.run.seed, rnd, pid)))
        metrics = MetricRecord({"num-examples": len(x)})
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)

    stamps: list[float] = []
    final: dict[str, float] = {}

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        data = federated_data(scenario.data, scenario.run.seed)
        model = initial_model(scenario.model, data.info, scenario.run.seed)

        def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            stamps.append(time.perf_counter())
            model.load_state_dict(arrays.to_torch_state_dict())
            final.update(evaluate(model, *data.test, data.info.task))
            return MetricRecord(final)

        fraction = scenario.strategy.fraction_train
        strategy = FedAvg(fraction_train=fraction, fraction_evaluate=0.0, min_available_nodes=n,
                          min_train_nodes=max(1, int(n * fraction)))
        strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=scenario.run.rounds,
                       evaluate_fn=central)

    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n, backend_config=backend)
    return [b - a for a, b in itertools.pairwise(stamps)], final
