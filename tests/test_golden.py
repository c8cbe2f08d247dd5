"""Behaviour is pinned: a few short shipped scenarios give the recorded metrics, summary and final weights
(timings aside) within float32 tolerances (tests/golden.py says how they follow from the steps a run takes), and a
deliberate change of behaviour fails them. Re-record with `python tests/golden.py record tests/golden NAME` only
for an intended change of results, and say why in the commit."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from golden import differences, fingerprint, load

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("name", sorted(p.stem for p in GOLDEN.glob("*.json")))
def test_scenario_reproduces_its_golden_run(name):
    assert differences(load(GOLDEN, name), fingerprint(name)) == []


def extra_local_step(monkeypatch):
    """The first client of round 1 takes one more step (its first batch again)."""
    from fedsim import training

    original, calls = training.minibatches, itertools.count()

    def batches(*args):
        out = list(original(*args))
        return out + out[:1] if next(calls) == 0 else out

    monkeypatch.setattr(training, "minibatches", batches)


def other_sampled_client(monkeypatch):
    """Round 1 trains client 1 in place of client 0."""
    from flwr.serverapp.strategy import fedavg

    original, calls = fedavg.sample_nodes, itertools.count()

    def sample(*args):
        nodes, everyone = original(*args)
        return ([nodes[1], *nodes[1:]] if next(calls) == 0 else nodes), everyone

    monkeypatch.setattr(fedavg, "sample_nodes", sample)


def learning_rate_up_1_percent(monkeypatch):
    from fedsim import training

    original = training.make_optimizer

    def make(model, cfg):
        optimizer = original(model, cfg)
        for group in optimizer.param_groups:
            group["lr"] *= 1.01
        return optimizer

    monkeypatch.setattr(training, "make_optimizer", make)


@pytest.mark.slow
@pytest.mark.parametrize("mutate", [extra_local_step, other_sampled_client, learning_rate_up_1_percent],
                         ids=lambda f: f.__name__)
def test_the_goldens_catch_a_changed_behaviour(mutate, monkeypatch):
    mutate(monkeypatch)
    found = differences(load(GOLDEN, "quickstart"), fingerprint("quickstart"))
    assert any(line.startswith("weights/") for line in found), found
