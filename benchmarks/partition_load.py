"""Loading a newly sampled client's partition: `python partition_load.py [SCENARIO ...] [--clients N]` (default
bench-w4 bench-w2) prints the mean milliseconds per fresh partition (FederatedData.partition, one warm call first).
"""

from __future__ import annotations

import argparse
import time

from fedsim.data import federated_data
from fedsim.scenario import Scenario


def ms_per_partition(name: str, clients: int) -> float:
    scenario = Scenario.load(name)
    data = federated_data(scenario.data, scenario.run.seed)
    data.partition(0)
    clients = min(clients, data.num_partitions - 1)
    start = time.perf_counter()
    for pid in range(1, clients + 1):
        data.partition(pid)
    return (time.perf_counter() - start) / clients * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenarios", nargs="*", default=["bench-w4", "bench-w2"])
    parser.add_argument("--clients", type=int, default=200)
    args = parser.parse_args()
    for name in args.scenarios:
        print(f"{name}: {ms_per_partition(name, args.clients):.2f} ms per fresh partition")


if __name__ == "__main__":
    main()
