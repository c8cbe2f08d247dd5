"""End-to-end runs: determinism, run dir contents, every strategy, every shipped scenario, the quickstart."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import fedsim
from fedsim.errors import Diverged
from fedsim.results import load_run, without_timings
from fedsim.scenario import Scenario, shipped_scenarios
from fedsim.strategies import STRATEGIES


def test_same_seed_same_metrics(tmp_path, small_scenario):
    scenario = small_scenario(strategy__fraction_train=0.6, data__partitioner__name="dirichlet",
                              data__partitioner__min_partition_size=5, strategy__fraction_evaluate=0.5)
    a = fedsim.run(scenario, out=tmp_path / "a")
    fedsim.run(scenario, out=tmp_path / "b")
    read = lambda d: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert without_timings(read(tmp_path / "a")) == without_timings(read(tmp_path / "b"))
    assert all(r["replies"] == 3 for r in a.metrics)  # int(5 * 0.6) clients per round
    c = fedsim.run(scenario.with_overrides({"run.seed": 2}), out=tmp_path / "c")
    assert without_timings(a.metrics) != without_timings(c.metrics)


def test_run_dir_contents(tmp_path, small_scenario):
    result = fedsim.run(small_scenario(strategy__fraction_evaluate=1.0), out=tmp_path / "run")
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert files == {"scenario.toml", "model.json", "metrics.jsonl", "summary.json", "model.pt"}
    rows = result.metrics
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert set(rows[0]) >= {"round", "train", "eval", "clients_eval", "time_s", "replies", "failures"}
    assert set(rows[0]["eval"]) == {"accuracy", "loss"}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["final"] == rows[-1]["eval"] and summary["wall_time_s"] > 0
    again = load_run(tmp_path / "run")
    assert again.metrics == rows and again.summary == summary and again.scenario == result.scenario


def test_regression_metrics(tmp_path, small_scenario):
    result = fedsim.run(small_scenario(data__dataset="diabetes", model__name="linear", client__lr=0.05,
                                       run__rounds=10), out=tmp_path / "r")
    assert set(result.final) == {"loss", "mse", "mae"}
    assert result.final["mse"] < 0.7  # standardised target: variance 1


@pytest.mark.parametrize("name", [n if n != "qfedavg" else pytest.param(n, marks=pytest.mark.slow)  # ~13 s
                                  for n in sorted(STRATEGIES)])
def test_every_flower_strategy_runs(name, tmp_path, small_scenario):
    params = {"krum": {"num_malicious_nodes": 1}, "fedtrimmedavg": {"beta": 0.2}}.get(name, {})
    scenario = small_scenario(strategy__name=name, run__rounds=5,
                              **{f"strategy__{k}": v for k, v in params.items()})
    result = fedsim.run(scenario, out=tmp_path / name)
    accuracies = [r["eval"]["accuracy"] for r in result.metrics]
    assert all(math.isfinite(a) for a in accuracies)
    assert accuracies[-1] > result.summary["initial"]["accuracy"] + 0.15, (name, accuracies)  # it learned
    if name == "qfedavg":
        assert "train_loss" in result.metrics[0]["train"]


# the papers' set-ups read example data (fedsim example-data); the slow tier runs them, smaller
SET_UPS = ("dru-age-regression", "fedld-retina", "fedld-retina-cpu", "femnist-natural", "salun-cifar10",
           "shakespeare-lstm")
SMALL_IMAGES = {"data.images.size": [16, 16], "client.batch_size": 8, "data.transforms": [
    {"kind": "random_resized_crop", "size": [16], "scale": [0.6, 1.0]}, {"kind": "horizontal_flip"}]}
FEWER = {"cifar10": {"per_class": 5, "test_per_class": 2}, "faces": {"n": 60}}  # example images, for time
HEAVY = ("bench-w5", "bench-w2")  # a ResNet-18 benchmark (smaller), 10,000 registered clients: make test-all's
SMALLER = {"bench-w5": {"data.generator.n_samples": 110, "data.partitioner.num_partitions": 4},
           "fedld-retina": {**SMALL_IMAGES, "model.name": "resnet18", "model.stem": "cifar", "model.norm": "group"},
           "fedld-retina-cpu": SMALL_IMAGES, "dru-age-regression": {"data.images.size": [16, 16]},
           "salun-cifar10": {"data.partitioner.num_partitions": 5}}  # 10 images each: 10% is one


def test_the_set_ups_name_their_example_data():
    from fedsim.example_data import layout_of

    assert {name for name, path in shipped_scenarios().items()
            if layout_of(Scenario.load(str(path)).data.dataset)} == set(SET_UPS)


@pytest.mark.parametrize("name", SET_UPS)
def test_a_set_up_validates_on_its_example_data(name, tmp_path, monkeypatch, cli):
    """The whole set-up as shipped (ResNet-50 at 384 px for FedLD's): data, model, one batch through it."""
    from fedsim.example_data import layout_of, write

    monkeypatch.chdir(tmp_path)
    code, _, err = cli("validate", name)
    assert code == 2 and f"fedsim example-data {layout_of(Scenario.load(name).data.dataset)}" in err
    write(layout_of(Scenario.load(name).data.dataset))
    code, out, err = cli("validate", name)
    assert code == 0 and out.startswith(f"ok: {name}"), err


@pytest.mark.parametrize("name", [n if n not in (*SET_UPS, *HEAVY) else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(shipped_scenarios())])
def test_shipped_scenario_runs(name, tmp_path, monkeypatch):
    from fedsim.example_data import LAYOUTS, WRITERS, layout_of

    layout = layout_of(Scenario.load(name).data.dataset)
    if layout:
        monkeypatch.chdir(tmp_path)
        WRITERS[layout](tmp_path / LAYOUTS[layout][0], **FEWER.get(layout, {}))
    shorter = {"run.rounds": 2, **SMALLER.get(name, {})}
    for i, _ in enumerate(Scenario.load(name).unlearning.requests if Scenario.load(name).unlearning else []):
        shorter[f"unlearning.requests.{i}.at_round"] = 1
    if name == "bench-w4":  # 55,000 generated images and a 1.6M-parameter CNN: the same set-up, 1,100 images
        shorter.update({"data.generator.n_samples": 1100, "data.partitioner.num_partitions": 20})
    scenario = Scenario.load(name, shorter)
    result = fedsim.run(scenario, out=tmp_path / name)
    assert len(result.metrics) == 2 and result.summary["failures"] == 0
    if scenario.unlearning:
        assert [r["method"] for r in result.summary["unlearning"]] == [m for r in scenario.unlearning.requests
                                                                       for m in r.method]


def test_quickstart_reaches_093(cli, tmp_path):
    code, out, _ = cli("run", "quickstart", "--out", str(tmp_path / "qs"))
    assert code == 0 and "final:" in out
    summary = json.loads((tmp_path / "qs" / "summary.json").read_text())
    assert summary["rounds"] == 30 and summary["final"]["accuracy"] >= 0.93, summary


def test_wall_time_counts_the_start_up(tmp_path, small_scenario):
    """summary.json's wall time runs from fedsim.run's start (data, model, a Ray cluster's start-up), and
    startup_s says how much of it came before round 1."""
    import time

    import fedsim
    from fedsim.runner import make_grid, run_on_grid
    from fedsim.server import prepare

    result = fedsim.run(small_scenario(run__rounds=2), out=tmp_path / "a")
    s = result.summary
    assert 0 < s["startup_s"] <= s["wall_time_s"]
    assert s["wall_time_s"] >= s["startup_s"] + sum(r["time_s"] for r in result.metrics) - 0.05
    scenario = small_scenario(run__rounds=1)
    prepared = prepare(scenario)
    late = run_on_grid(prepared, make_grid(prepared), tmp_path / "b", started=time.perf_counter() - 100)
    assert late.summary["startup_s"] >= 100 and late.summary["wall_time_s"] >= 100


def strict_json(path: Path):
    """A .json file (or a .jsonl file's rows) read as strict parsers (JavaScript, jq, Go) do: NaN / Infinity refused."""
    def refuse(name):
        raise ValueError(f"{path} holds {name}")

    if path.suffix == ".json":
        return json.loads(path.read_text(), parse_constant=refuse)
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines() if line.strip()]


def test_a_diverged_run_stops_after_that_round_with_one_line_and_strict_json(cli, tmp_path, small_scenario):
    path = tmp_path / "diverging.toml"
    path.write_text(small_scenario(client__lr=1e20, run__rounds=4).to_toml())
    code, _, err = cli("run", str(path), "--out", str(tmp_path / "run"), "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: round 1: training diverged (train/loss is nan)") and "lower client.lr" in err
    rows, summary = strict_json(tmp_path / "run" / "metrics.jsonl"), strict_json(tmp_path / "run" / "summary.json")
    assert [r["round"] for r in rows] == [1] and rows[0]["train"]["loss"] is None
    assert summary["stopped"] == "training diverged: train/loss is nan" and summary["final"]["loss"] is None
    with pytest.raises(Diverged, match="round 1: training diverged") as raised:
        fedsim.run(small_scenario(client__lr=1e20, run__rounds=4), out=tmp_path / "api")
    assert raised.value.result.summary["rounds"] == 1  # the Python API still gets the run so far


def test_a_bagged_run_diverging_under_label_dp_noise_names_that_cause(cli, tmp_path):
    """Cross-entropy against a noisy (negative) bag proportion has no lower bound: a smaller lr only delays it."""
    code, _, err = cli("run", "quickstart", "--set", "run.rounds=3", "--set", "bags.k=2", "--set", "bags.rho=1.0",
                       "--set", "bags.epsilon=1e-3", "--out", str(tmp_path / "run"), "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "training diverged" in err, err
    assert "bags.epsilon = 0.001 adds Laplace noise of scale 1e+03 to the bag proportions" in err
    assert "raise bags.epsilon or bags.k, or lower client.lr" in err


def test_stop_on_nan_false_runs_on_and_writes_null_for_what_is_not_finite(cli, tmp_path, small_scenario):
    result = fedsim.run(small_scenario(client__lr=1e20, run__rounds=3, run__stop_on_nan=False), out=tmp_path / "run")
    assert result.summary["rounds"] == 3 and "stopped" not in result.summary
    summary = strict_json(tmp_path / "run" / "summary.json")
    assert summary["final"]["loss"] is None and all(r["eval"]["loss"] is None
                                                    for r in strict_json(tmp_path / "run" / "metrics.jsonl"))
    code, out, _ = cli("show", str(tmp_path / "run"))
    assert code == 0 and "final: loss inf/nan" in out
