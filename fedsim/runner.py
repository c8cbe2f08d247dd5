"""`fedsim.run(scenario)`: prepare, start the runtime, run the server loop, write the run dir."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from flwr.serverapp import Grid

from fedsim.arrays import record_to_state
from fedsim.clients.app import SCENARIO_KEY
from fedsim.clients.app import app as client_app
from fedsim.errors import ScenarioError
from fedsim.results import RunRecorder, RunResult, new_run_dir
from fedsim.runtime import InlineGrid, VirtualNodesGrid
from fedsim.scenario import Scenario
from fedsim.server import Prepared, prepare, server_main


def make_grid(scenario: Scenario) -> VirtualNodesGrid:
    """The Grid for `run.runtime`: inline, or Ray (local, or `run.ray_address` / $RAY_ADDRESS)."""
    run_config = {SCENARIO_KEY: scenario.model_dump_json()}
    n = scenario.data.partitioner.num_partitions
    if scenario.run.runtime == "inline":
        if scenario.run.round_timeout_s is not None:
            raise ScenarioError("run.round_timeout_s", "an in-process client cannot be interrupted",
                                "use runtime = 'ray' for per-round timeouts, or remove round_timeout_s")
        return InlineGrid(client_app, n, run_config, faults=scenario.faults, seed=scenario.run.seed)
    if scenario.run.runtime == "ray":
        from fedsim.runtime.ray_grid import RayGrid

        address = scenario.run.ray_address or os.environ.get("RAY_ADDRESS") or None
        return RayGrid(n, run_config, scenario.run.resources, address=address, faults=scenario.faults,
                       seed=scenario.run.seed)
    raise ScenarioError("run.runtime", "'flower' runs through Flower's own CLI",
                        "run `flwr run . --run-config scenario=\\\"NAME\\\"` from the project root")


def run_on_grid(prepared: Prepared, grid: Grid, out: str | Path | None = None,
                on_round: Callable[[dict], None] | None = None,
                describe: Callable[[], dict] | None = None) -> RunResult:
    """The server loop on any Grid (fedsim's or Flower's), writing the run dir; nothing is kept if it fails.
    `describe()` says what ran the clients, asked at the end (e.g. how many Ray actors were replaced)."""
    recorder = RunRecorder(new_run_dir(prepared.scenario, out), prepared.scenario, on_round)
    try:
        arrays = server_main(grid, prepared, recorder)
    except BaseException:  # bad input, Ctrl-C or a crash: leave no half-written run dir
        recorder.discard()
        raise
    return recorder.finish(record_to_state(arrays), prepared.data.info.task, describe() if describe else None)


def run(scenario: Scenario, out: str | Path | None = None, on_round: Callable[[dict], None] | None = None) -> RunResult:
    """Run `scenario` to the end; returns what the run dir holds. Nothing is written if the input is bad."""
    prepared = prepare(scenario)
    grid = make_grid(scenario)
    try:
        return run_on_grid(prepared, grid, out, on_round, grid.describe)
    finally:
        grid.close()
