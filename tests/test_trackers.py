"""Experiment trackers: what a run streams to TensorBoard and MLflow, read back with the libraries' own readers."""

from __future__ import annotations

import json

import pytest

import fedsim
from fedsim.scenario import Scenario

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_and_mlflow_get_every_round_the_scenario_and_the_artifacts(tmp_path, small_scenario):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scenario = small_scenario(run__rounds=3).with_overrides({"output.trackers": ["tensorboard", "mlflow"]})
    result = fedsim.run(scenario, out=tmp_path / "run")
    rows = _rows(result.run_dir)

    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    accuracy = events.Scalars("eval/accuracy")
    assert [e.step for e in accuracy] == [0, 1, 2, 3]
    assert [e.value for e in accuracy[1:]] == pytest.approx([r["eval"]["accuracy"] for r in rows])
    assert "train/loss" in events.Tags()["scalars"] and "scenario/text_summary" in events.Tags()["tensors"]

    client = MlflowClient(tracking_uri=f"sqlite:///{result.run_dir / 'mlflow.db'}")
    run_id = (result.run_dir / "mlflow-run-id").read_text()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["run.rounds"] == "3"
    history = client.get_metric_history(run_id, "eval/loss")
    assert [m.step for m in history] == [0, 1, 2, 3]
    assert [m.value for m in history[1:]] == pytest.approx([r["eval"]["loss"] for r in rows])
    assert {a.path for a in client.list_artifacts(run_id)} == {"summary.json", "scenario.toml", "model.pt"}


def test_epsilon_and_unlearning_rows_reach_the_tracker(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dp = fedsim.run(Scenario.load("client-dp", ["run.rounds=2", 'output.trackers=["tensorboard"]']),
                    out=tmp_path / "dp")
    events = EventAccumulator(str(dp.run_dir / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("privacy/epsilon")] == pytest.approx(
        [r["privacy"]["epsilon"] for r in _rows(dp.run_dir)])

    unlearn = fedsim.run(Scenario.load("unlearn-client", [
        "run.rounds=3", "unlearning.requests.0.at_round=2", 'unlearning.requests.0.method=["retrain", "finetune"]',
        'output.trackers=["tensorboard"]']), out=tmp_path / "ul")
    events = EventAccumulator(str(unlearn.run_dir / "tensorboard"))
    events.Reload()
    (ua,) = events.Scalars("unlearning/client-3/finetune/ua")
    row = next(r for r in unlearn.summary["unlearning"] if r["method"] == "finetune")
    assert ua.step == 2 and ua.value == pytest.approx(row["ua"])


def test_a_tracker_without_its_package_is_a_one_line_error(cli, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    code, _, err = cli("validate", "quickstart", "--set", 'output.trackers=["mlflow"]')
    assert code == 2 and err.count("\n") == 1
    assert "output.trackers: 'mlflow' needs the mlflow package" in err and 'pip install "fedsim[tracking]"' in err


def test_a_resumed_run_continues_its_mlflow_run_and_tensorboard_log(tmp_path, small_scenario):
    import threading

    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fedsim.runner import Interrupted, resume

    scenario = small_scenario(run__rounds=3).with_overrides({"output.trackers": ["tensorboard", "mlflow"]})
    stop = threading.Event()
    with pytest.raises(Interrupted):
        fedsim.run(scenario, out=tmp_path / "run", on_round=lambda row: stop.set(), stop=stop)
    resume(tmp_path / "run")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == scenario.run.name]
    (run,) = client.search_runs([experiment.experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/accuracy")] == [0, 1, 2, 3]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/accuracy")] == [0, 1, 2, 3]
