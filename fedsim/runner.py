"""`fedsim.run(scenario)`: prepare, pick the runtime, run the server loop, write the run dir."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fedsim.clients.app import SCENARIO_KEY
from fedsim.clients.app import app as client_app
from fedsim.errors import FedsimError, ScenarioError
from fedsim.results import RunRecorder, RunResult, new_run_dir
from fedsim.runtime import InlineGrid
from fedsim.scenario import Scenario
from fedsim.server import prepare, server_main


def run(scenario: Scenario, out: str | Path | None = None, on_round: Callable[[dict], None] | None = None) -> RunResult:
    """Run `scenario` to the end; returns what the run dir holds. Nothing is written if the input is bad."""
    if scenario.run.runtime != "inline":
        raise ScenarioError("run.runtime", f"'{scenario.run.runtime}' is not available in this version",
                            "use runtime = 'inline'")
    prepared = prepare(scenario)
    recorder = RunRecorder(new_run_dir(scenario, out), scenario, on_round)
    try:
        grid = InlineGrid(client_app, prepared.data.num_partitions, {SCENARIO_KEY: scenario.model_dump_json()})
        result = server_main(grid, prepared, recorder)
    except (FedsimError, KeyboardInterrupt):
        recorder.discard()
        raise
    return recorder.finish(result.arrays.to_torch_state_dict(), prepared.data.info.task)
