"""Flower-native entry points for `flwr run .`: the ServerApp, and fedsim's ClientApp re-exported.

The scenario comes from the run config (`scenario = "quickstart"` in pyproject's [tool.flwr.app.config], or
`flwr run . --run-config 'scenario="path/to.toml"'`); Flower's own runtime supplies the Grid, so the same
strategies and ClientApp run unchanged. The run dir is written as with `fedsim run` (run config `out` to choose it).
"""

from __future__ import annotations

import os

import ray
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedsim import _flower, protocol
from fedsim.clients.app import app as client_app
from fedsim.errors import FedsimError
from fedsim.results import new_run_dir
from fedsim.runner import run_on_grid
from fedsim.runtime.ray_cluster import stale_cluster_file
from fedsim.scenario import Scenario
from fedsim.server import prepare
from fedsim.strategies.grid_view import GridView

server_app = ServerApp()
DEFAULT_SCENARIO = "quickstart"  # pyproject's [tool.flwr.app.config] scenario
__all__ = ["client_app", "server_app"]


def start_ray_here_if_its_cluster_file_is_stale() -> None:
    """Under `flwr run`, Flower's simulation loads the ClientApp (this module) before it calls `ray.init()` with no
    address, which would attach to the cluster Ray's `ray_current_cluster` file names: when nothing answers there,
    start a local Ray instead (as `fedsim run` does) and say so, rather than hang for minutes without a word."""
    if ray.is_initialized():  # a Ray worker, or a process already connected
        return
    stale = stale_cluster_file()
    if stale is not None:
        path, address = stale
        os.environ["RAY_ADDRESS"] = "local"
        print(f"note: {path} names a Ray cluster at {address} where nothing answers (stopped without `ray stop`); "
              f"this run starts its own local Ray instead. Remove the stale file: rm {path}", flush=True)


start_ray_here_if_its_cluster_file_is_stale()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        run_scenario(grid, context)
    except FedsimError as exc:  # `flwr run` prints a traceback and its own exit message: make ours the last line
        _flower.print_after_flowers_exit_message(f"error: {exc.line()}")
        raise


def run_scenario(grid: Grid, context: Context) -> None:
    """The run config's scenario on Flower's Grid, written to a run dir as `fedsim run` writes it."""
    name = str(context.run_config[protocol.SCENARIO])
    scenario = Scenario.load(name)
    expected = scenario.data.partitioner.num_partitions
    nodes = len(list(grid.get_node_ids()))
    if nodes != expected:  # Flower sizes the federation, not the app: a different count is another experiment
        raise FedsimError("num-supernodes", f"Flower started {nodes} SuperNodes but scenario '{name}' has {expected} "
                          "clients (partitions), so this would not be the experiment `fedsim run` runs",
                          f"run: {rerun_command(name, expected)}")
    prepared = prepare(scenario, run_dir=new_run_dir(scenario, context.run_config.get("out") or None))
    grid = PartitionOrdered(grid)
    result = run_on_grid(prepared, grid, None,
                         lambda row: print(f"round {row['round']}: {row['eval']}", flush=True),
                         lambda: {"kind": "flower"})
    print(f"fedsim run dir: {result.run_dir.resolve()} final: {result.final}", flush=True)


def rerun_command(scenario: str, supernodes: int) -> str:
    """The `flwr run` command that gives `scenario` one SuperNode per partition."""
    config = "" if scenario == DEFAULT_SCENARIO else f""" --run-config 'scenario="{scenario}"'"""
    return f'flwr run . --stream --federation-config "num-supernodes={supernodes}"{config}'


class PartitionOrdered(GridView):
    """Flower's Grid as fedsim's Grids present theirs: nodes listed, and replies returned, in partition order.
    Flower's SuperNodes have random ids, so a strategy's seeded sample of `get_node_ids()` would pick other
    clients than `fedsim run` does, and replies would be summed in another order; each node is asked once which
    partition it holds (a `query.partition` message), and the same seed then picks the same clients."""

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        nodes = list(grid.get_node_ids())
        queries = [Message(RecordDict(), dst_node_id=n, message_type=protocol.QUERY_PARTITION) for n in nodes]
        self.partition = {r.metadata.src_node_id: int(r.content[protocol.METRICS][protocol.PARTITION_ID])
                          for r in grid.send_and_receive(queries) if not r.has_error()}
        if len(self.partition) != len(nodes):
            raise FedsimError("flwr run", f"only {len(self.partition)} of {len(nodes)} SuperNodes said which "
                              "partition they hold", "check the SuperNodes' logs and rerun")

    def get_node_ids(self) -> list[int]:
        return sorted(self._grid.get_node_ids(), key=lambda n: self.partition.get(n, len(self.partition)))

    def send_and_receive(self, messages, *, timeout=None):
        replies = self._grid.send_and_receive(messages, timeout=timeout)
        return sorted(replies, key=lambda m: self.partition.get(m.metadata.src_node_id, len(self.partition)))
