"""Flower-native entry points for `flwr run .`: the ServerApp, and fedsim's ClientApp re-exported.

The scenario comes from the run config (`scenario = "quickstart"` in pyproject's [tool.flwr.app.config], or
`flwr run . --run-config 'scenario="path/to.toml"'`); Flower's own runtime supplies the Grid, so the same
strategies and ClientApp run unchanged. The run dir is written as with `fedsim run` (run config `out` to choose it).
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsim import protocol
from fedsim.clients.app import app as client_app
from fedsim.runner import run_on_grid
from fedsim.scenario import Scenario
from fedsim.server import prepare

server_app = ServerApp()
__all__ = ["client_app", "server_app"]


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    scenario = Scenario.load(str(context.run_config[protocol.SCENARIO]))
    expected = scenario.data.partitioner.num_partitions
    prepared = prepare(scenario)
    nodes = len(list(grid.get_node_ids()))
    if nodes != expected:
        print(f"warning: {nodes} SuperNodes but the scenario has {expected} partitions", flush=True)
    result = run_on_grid(prepared, grid, context.run_config.get("out") or None,
                         lambda row: print(f"round {row['round']}: {row['eval']}", flush=True), lambda: {"kind": "flower"})
    print(f"fedsim run dir: {result.run_dir.resolve()} final: {result.final}", flush=True)
