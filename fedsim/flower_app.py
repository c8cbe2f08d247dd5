"""Flower-native entry points for `flwr run .`: the ServerApp, and fedsim's ClientApp re-exported.

The scenario comes from the run config (`scenario = "quickstart"` in pyproject's [tool.flwr.app.config], or
`flwr run . --run-config 'scenario="path/to.toml"'`); Flower's own runtime supplies the Grid, so the same
strategies and ClientApp run unchanged. The run dir is written as with `fedsim run` (run config `out` to choose it).
"""

from __future__ import annotations

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedsim import protocol
from fedsim.clients.app import app as client_app
from fedsim.errors import FedsimError
from fedsim.results import new_run_dir
from fedsim.runner import run_on_grid
from fedsim.scenario import Scenario
from fedsim.server import prepare
from fedsim.strategies.grid_view import GridView

server_app = ServerApp()
DEFAULT_SCENARIO = "quickstart"  # pyproject's [tool.flwr.app.config] scenario
__all__ = ["client_app", "server_app"]


@server_app.main()
def main(grid: Grid, context: Context) -> None:
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
