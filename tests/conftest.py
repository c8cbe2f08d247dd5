"""Shared helpers: small scenarios that run in well under a second."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the plain-PyTorch reference loop

from fedsim.scenario import Scenario

if os.environ.get("FEDSIM_TEST_THREADS"):  # make test-kernels: the suite under 1 and 2 torch threads
    import torch

    torch.set_num_threads(int(os.environ["FEDSIM_TEST_THREADS"]))


@pytest.fixture(scope="session")
def small_scenario():
    """A factory: digits, 5 IID clients, MLP, FedAvg, 3 rounds, plus dotted-key overrides (use __ for dots)."""
    return make_small_scenario


def make_small_scenario(**overrides) -> Scenario:
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


@pytest.fixture
def float64():
    """Models, data and whole runs in float64 for the length of a test (tests/golden.py's float64_runs)."""
    from golden import float64_runs

    with float64_runs():
        yield


@pytest.fixture
def reply():
    """A factory for a client's train reply to a sent message, built by hand as Flower's own strategy tests do:
    reply(sent, {"w": array}, num_examples=..., error=None) -> Message (an error reply when `error` is a reason)."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

    from fedsim._flower import assign_message_id

    def make(sent, arrays: dict | None = None, num_examples: int = 1, error: str | None = None, **metrics):
        assign_message_id(sent, f"m{sent.metadata.dst_node_id}")
        if error is not None:
            return Message(Error(code=0, reason=error), reply_to=sent)
        record = ArrayRecord({k: Array(np.asarray(v)) for k, v in (arrays or {}).items()})
        return Message(RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": num_examples,
                                                                              **metrics})}),
                       reply_to=sent)

    return make
