"""Random mistakes of the kinds users make (non-finite or boolean numbers, rates and sizes out of range, degenerate
data, impossible strategies and requests, empty files), one to three at a time: every run either stops with
one-line errors (nothing half-written) or gives finite, consistent figures. Each draw is seeded by its index, so a
failure names the draw that reproduces it."""

from __future__ import annotations

import math
import random
import tomllib
from pathlib import Path

import pytest
from test_bad_input import GOOD
from test_runs import strict_json

BASE = GOOD.replace('name = "mlp"', 'name = "mlp"\nhidden = [16]')  # test_bad_input's valid scenario

# Mistakes given as `--set` overrides, each kind with the values users gave it
SETTINGS = {
    "client.lr": ["inf", "-inf", "nan", "1e400", "1e6", "0", "-0.1", "true"],
    "client.momentum": ["nan", "-1", "1.5", "false"],
    "client.weight_decay": ["inf", "-0.5"],
    "client.batch_size": ["0", "-1", "1", "100000", "true", "2.5"],
    "client.local_epochs": ["0", "-1", "true"],
    "run.rounds": ["0", "-3", "true", "1.5", '"2"'],
    "run.seed": ["-1", "1e3", "true", str(2**70)],
    "data.partitioner.num_partitions": ["0", "1", "5000", "true"],
    "data.test_fraction": ["0", "1", "0.999", "-0.2", "nan"],
    "faults.failure_rate": ["1.0", "1.5", "-0.1", "nan", "0.99"],
    "faults.dropout_rate": ["1.0", "0.9", "true"],
    "strategy.fraction_train": ["0", "1e-9", "1.5", "true"],
    "strategy.min_train_nodes": ["0", "10", "1000", "-2"],
}
STRATEGY_MISTAKES = [
    ["strategy.name=krum", "strategy.num_malicious_nodes=10"],
    ["strategy.name=krum", "strategy.num_malicious_nodes=1"],
    ["strategy.name=fedadam", "strategy.eta=inf"],
    ["strategy.name=fedyogi", "strategy.beta_1=1.0"],
    ["strategy.name=fedprox", "strategy.proximal_mu=-1"],
    ["data.partitioner.name=dirichlet", "data.partitioner.alpha=1e-9"],
    ["data.partitioner.name=dirichlet", "data.partitioner.alpha=0"],
    ["data.partitioner.name=dirichlet", "data.partitioner.alpha=inf"],
]


def _request(at_round: object, target: object, kind: str = '"client"', method: str = '["retrain"]') -> str:
    return f"\n[[unlearning.requests]]\nat_round = {at_round}\nkind = {kind}\ntarget = {target}\nmethod = {method}\n"


TEXT_MISTAKES = {  # edits of the scenario file's text
    "empty-file": lambda text: "",
    "only-a-section": lambda text: "[run]\n",
    "typo-key": lambda text: text.replace("rounds = 2", "rouns = 2"),
    "forgotten-twice": lambda text: text + _request(1, 1) + _request(2, 1),
    "forget-no-such-client": lambda text: text + _request(1, 99),
    "forget-after-the-end": lambda text: text + _request(9, 1),
    "forget-a-class-that-is-not": lambda text: text + _request(1, 42, kind='"class"'),
    "unknown-method": lambda text: text + _request(1, 1, method='["retrian"]'),
    "boolean-target": lambda text: text + _request(1, "true"),
}


def _csv(rows: list[str]) -> str:
    return "a,b,label\n" + "".join(f"{r}\n" for r in rows)


CSV_MISTAKES = {  # (the CSV, extra [data] lines)
    "label-among-features": (_csv([f"{i},{i % 3},{i % 2}" for i in range(80)]), 'feature_columns = ["a", "label"]'),
    "one-class": (_csv([f"{i},{i % 3},1" for i in range(80)]), ""),
    "three-rows": (_csv(["1,2,0", "3,4,1", "5,6,0"]), ""),
    "inf-feature": (_csv([f"{'inf' if i == 7 else i},{i % 3},{i % 2}" for i in range(80)]), ""),
    "huge-feature": (_csv([f"{'1e400' if i == 7 else i},{i % 3},{i % 2}" for i in range(80)]), ""),
    "empty-cell": (_csv([f"{'' if i == 7 else i},{i % 3},{i % 2}" for i in range(80)]), ""),
    "text-cell": (_csv([f"{'seven' if i == 7 else i},{i % 3},{i % 2}" for i in range(80)]), ""),
    "no-label-column": ("a,b,c\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(80)), ""),
}


# Settings that are allowed but extreme, drawn alongside the mistakes so that many draws run to the end
EDGES = [
    ["client.lr=1e6"], ["client.lr=50"], ["client.lr=1e-12"], ["client.batch_size=1"], ["client.batch_size=100000"],
    ["client.momentum=0.999"], ["run.seed=1e3"], [f"run.seed={2**64 - 1}"], [f"run.seed={2**70}"], ["run.rounds=1"],
    ["data.partitioner.num_partitions=1"], ["data.partitioner.num_partitions=40"], ["data.test_fraction=0.999"],
    ["data.test_fraction=0.01"], ["faults.failure_rate=0.99"], ["faults.dropout_rate=0.9"],
    ["faults.straggler_rate=1.0", "faults.deadline_s=0.5"], ["strategy.fraction_train=1e-9"],
    ["strategy.min_train_nodes=4"], ["strategy.name=fedmedian"], ["strategy.name=fedadam", "strategy.eta=10"],
    ["strategy.name=krum", "strategy.num_malicious_nodes=1", "data.partitioner.num_partitions=8"],
    ["data.partitioner.name=dirichlet", "data.partitioner.alpha=1e-9", "data.partitioner.min_partition_size=0"],
    ["data.partitioner.name=dirichlet", "data.partitioner.alpha=1e6"],
    ["data.partitioner.name=pathological", "data.partitioner.classes_per_partition=1"],
    ["data.partitioner.name=shard", "data.partitioner.shards_per_partition=1"],
    ["privacy.mode=dp-sgd", "privacy.noise_multiplier=1e-6"], ["privacy.mode=dp-sgd", "privacy.noise_multiplier=100"],
    ["privacy.mode=client-dp", "privacy.noise_multiplier=50", "privacy.q=0.01"], ["bags.k=50"],
    ["bags.k=2", "bags.rho=1.0", "bags.epsilon=1e-3"],
]
TEXT_EDGES = {
    "forget-a-client": lambda text: text + _request(1, 3),
    "forget-a-class": lambda text: text + _request(1, 9, kind='"class"', method='["retrain", "gradient-ascent"]'),
}


def draw(index: int, folder: Path) -> tuple[str, list[str], str]:
    """Draw `index`: (what was drawn, the --set overrides, the scenario file's text). Up to two mistakes and up to
    two extreme settings; a quarter of the draws hold no mistake at all."""
    rng = random.Random(f"fuzz-{index}")
    text, sets, drawn = BASE, [], []
    for _ in range(rng.choice([0, 1, 1, 2])):
        kind = rng.choice(["setting", "setting", "setting", "strategy", "text", "csv"])
        if kind == "setting":
            key = rng.choice(sorted(SETTINGS))
            sets.append(f"{key}={rng.choice(SETTINGS[key])}")
            drawn.append(sets[-1])
        elif kind == "strategy":
            pair = rng.choice(STRATEGY_MISTAKES)
            sets += pair
            drawn.append(" ".join(pair))
        elif kind == "text":
            name = rng.choice(sorted(TEXT_MISTAKES))
            text = TEXT_MISTAKES[name](text)
            drawn.append(name)
        else:
            name = rng.choice(sorted(CSV_MISTAKES))
            rows, extra = CSV_MISTAKES[name]
            (folder / "data.csv").write_text(rows)
            text = text.replace('dataset = "digits"', f'dataset = "file:{folder / "data.csv"}"\n{extra}').replace(
                "num_partitions = 4", "num_partitions = 2")
            drawn.append(f"csv {name}")
    for _ in range(rng.choice([1, 1, 2]) if not drawn else rng.choice([0, 1])):
        if rng.random() < 0.15:
            name = rng.choice(sorted(TEXT_EDGES))
            text = TEXT_EDGES[name](text)
            drawn.append(name)
        else:
            edge = rng.choice(EDGES)
            sets += edge
            drawn.append(" ".join(edge))
    return "; ".join(drawn), sets, text


def _numbers(value: object):
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def check_run_dir(run_dir: Path, finished: bool) -> None:
    """Valid JSON throughout; for a finished run, figures finite and consistent with each other."""
    summary, rows = strict_json(run_dir / "summary.json"), strict_json(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == list(range(1, len(rows) + 1))
    if not finished:
        return
    assert len(rows) == summary["rounds"]
    assert all(math.isfinite(x) for x in _numbers(rows)) and all(math.isfinite(x) for x in _numbers(summary))
    evaluated = [r["eval"] for r in rows if "eval" in r]
    assert summary["final"] == (evaluated[-1] if evaluated else summary["initial"])
    for figures in [summary["initial"], *evaluated]:
        assert figures["loss"] >= 0 and 0 <= figures.get("accuracy", 0) <= 1
    clients = tomllib.loads((run_dir / "scenario.toml").read_text())["data"]["partitioner"]["num_partitions"]
    assert all(0 <= r["replies"] <= clients for r in rows)


def check(index: int, cli, tmp_path: Path) -> None:
    drawn, sets, text = draw(index, tmp_path)
    path, run_dir = tmp_path / "s.toml", tmp_path / "run"
    path.write_text(text)
    overrides = [arg for s in sets for arg in ("--set", s)]
    code, _, err = cli("run", str(path), *overrides, "--out", str(run_dir), "-q")
    where = f"draw {index} ({drawn})"
    assert "Traceback" not in err, where
    if code == 0:
        check_run_dir(run_dir, finished=True)
        return
    lines = [line for line in err.splitlines() if line.strip()]
    assert code in (1, 2), where
    assert any(line.startswith("error: ") for line in lines), (where, err)
    assert all(line.startswith(("error: ", "note: ", "warning: ")) for line in lines), (where, err)
    if run_dir.exists():  # stopped after it started (diverged, nothing trained): what it wrote is whole
        check_run_dir(run_dir, finished=False)
    else:  # refused before it started: `validate` refuses it with the same first line
        assert cli("validate", str(path), *overrides)[2].splitlines()[0] == lines[0], where


@pytest.mark.parametrize("index", range(12))
def test_random_mistakes_give_one_line_errors_or_finite_consistent_figures(index, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check(index, cli, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(12, 112))
def test_many_more_random_mistakes(index, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check(index, cli, tmp_path)
