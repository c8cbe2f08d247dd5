"""Shared helpers: small scenarios that run in well under a second."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the plain-PyTorch reference loop

from fedsim.scenario import Scenario


def small_scenario(**overrides) -> Scenario:
    """digits, 5 IID clients, MLP, FedAvg, 3 rounds, plus dotted-key overrides (use __ for dots)."""
    base = {
        "run.name": "small", "run.rounds": 3, "run.seed": 1,
        "data.dataset": "digits", "data.partitioner.name": "iid", "data.partitioner.num_partitions": 5,
        "model.name": "mlp", "model.hidden": [16], "client.batch_size": 32, "client.lr": 0.1,
    }
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return Scenario.from_dict({}, overrides=base)


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run `fedsim ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from fedsim.cli import main

    def invoke(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["fedsim", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return invoke
