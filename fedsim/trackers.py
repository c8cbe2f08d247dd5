"""Experiment trackers as round callbacks: TensorBoard event files and MLflow runs, off by default.

`[output] trackers = ["tensorboard", "mlflow"]` streams every round's metrics row (central evaluation, client
training, the privacy ledger's epsilon, fault counts, wall time: every number in the row, keys joined by "/")
as it is written; at the end the unlearning table (one value per request, method and metric, at the request's
round) and, for MLflow, summary.json, scenario.toml and model.pt as artifacts. TensorBoard writes to
RUN_DIR/tensorboard/, MLflow to `output.mlflow_uri` (default: a SQLite store RUN_DIR/mlflow.db with artifacts in
RUN_DIR/mlartifacts/; MLflow 3 no longer takes plain folders), in an experiment named after `run.name` with the
scenario's settings as params. The packages are an optional extra:
`pip install "fedsim[tracking]"`.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim.errors import ScenarioError
from fedsim.loop import RoundCallback
from fedsim.quiet import quiet

if TYPE_CHECKING:
    from fedsim.results import RunRecorder, RunResult
    from fedsim.scenario import Scenario

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # tracker -> the module it needs
MLFLOW_RUN_ID = "mlflow-run-id"  # in the run dir: a resumed run continues the same MLflow run


def check_installed(trackers: list[str]) -> None:
    """A one-line error for a tracker whose package is missing (before anything runs)."""
    for name in trackers:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ScenarioError("output.trackers", f"'{name}' needs the {PACKAGES[name]} package, which is not "
                                "installed", "pip install \"fedsim[tracking]\" (or remove it from output.trackers)")


def flatten(tree: dict[str, Any], sep: str, prefix: str = "") -> dict[str, Any]:
    """A nested dict's leaves keyed by their path joined with `sep`."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, sep, f"{prefix}{key}{sep}"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def numbers(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number in a (nested) metrics row, keyed by its path joined with "/" (booleans and text left out)."""
    return {k: float(v) for k, v in flatten(tree, "/", prefix).items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def unlearning_numbers(summary: dict[str, Any]) -> list[tuple[int, dict[str, float]]]:
    """(round, {"unlearning/<request>/<method>/<metric>": value}) for every row of the unlearning table."""
    out = []
    for row in summary.get("unlearning", []):
        request = row["request"]
        where = f"unlearning/{request['kind']}-{request['target']}/{row['method']}/"
        values = {k: v for k, v in row.items() if k not in ("request", "method")}
        out.append((int(request["at_round"]), numbers(values, where)))
    return out


class TensorBoardTracker(RoundCallback):
    """Scalars per round in RUN_DIR/tensorboard/ (torch's SummaryWriter)."""

    def __init__(self, run_dir: Path, scenario: Scenario) -> None:
        self.dir, self.scenario, self.writer = run_dir / "tensorboard", scenario, None

    def on_run_start(self, first_round: int, initial: dict[str, float] | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.dir), purge_step=first_round if first_round > 1 else None)
        if first_round == 1:
            self.writer.add_text("scenario", "```toml\n" + self.scenario.to_toml() + "\n```")
            for key, value in numbers(initial or {}, "eval/").items():
                self.writer.add_scalar(key, value, 0)

    def after_round(self, server_round: int, arrays, row: dict[str, Any], stopping: bool) -> None:
        for key, value in numbers(row).items():
            if key != "round":
                self.writer.add_scalar(key, value, server_round)
        self.writer.flush()

    def finish(self, result: RunResult) -> None:
        for step, values in unlearning_numbers(result.summary):
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        self.writer.close()


class MlflowTracker(RoundCallback):
    """One MLflow run per fedsim run (continued on resume): params, metrics per round, artifacts at the end."""

    def __init__(self, run_dir: Path, scenario: Scenario, uri: str | None) -> None:
        self.run_dir, self.scenario = run_dir, scenario
        self.own_store = uri is None
        self.uri = uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self.client, self.run_id = None, None

    def on_run_start(self, first_round: int, initial: dict[str, float] | None) -> None:
        from mlflow.tracking import MlflowClient

        with quiet("mlflow", level=logging.WARNING):  # "Creating initial MLflow database tables..."
            self.client = MlflowClient(tracking_uri=self.uri)
            self.client.search_experiments(max_results=1)  # creates the store's tables now, quietly
        id_file = self.run_dir / MLFLOW_RUN_ID
        if first_round > 1 and id_file.is_file():
            self.run_id = id_file.read_text().strip()
            return
        name = self.scenario.run.name
        experiment = self.client.get_experiment_by_name(name)
        artifacts = (self.run_dir / "mlartifacts").resolve().as_uri() if self.own_store else None
        experiment_id = experiment.experiment_id if experiment else \
            self.client.create_experiment(name, artifact_location=artifacts)
        self.run_id = self.client.create_run(experiment_id, run_name=self.run_dir.name).info.run_id
        id_file.write_text(self.run_id)
        from mlflow.entities import Param

        params = [Param(k, str(v)[:500]) for k, v in flatten(self.scenario.to_dict(), ".").items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        self._log(numbers(initial or {}, "eval/"), 0)

    def after_round(self, server_round: int, arrays, row: dict[str, Any], stopping: bool) -> None:
        self._log({k: v for k, v in numbers(row).items() if k != "round"}, server_round)

    def finish(self, result: RunResult) -> None:
        for step, values in unlearning_numbers(result.summary):
            self._log(values, step)
        for name in ("summary.json", "scenario.toml", "model.pt"):
            if (result.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(result.run_dir / name))
        self.client.set_terminated(self.run_id)

    def _log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])


def trackers(scenario: Scenario, recorder: RunRecorder) -> list[RoundCallback]:
    """The scenario's trackers, each also finishing when the recorder writes the run's result."""
    made: list[RoundCallback] = []
    for name in scenario.output.trackers:
        tracker = TensorBoardTracker(recorder.run_dir, scenario) if name == "tensorboard" else \
            MlflowTracker(recorder.run_dir, scenario, scenario.output.mlflow_uri)
        recorder.on_finish.append(tracker.finish)
        made.append(tracker)
    return made
