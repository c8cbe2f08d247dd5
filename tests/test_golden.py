"""Behaviour is pinned: a few short shipped scenarios give the recorded metrics, summary and final weights
(timings aside) within float32 tolerances (tests/golden.py says how they follow from the steps a run takes), and a
deliberate change of behaviour fails them. Re-record with `python tests/golden.py record tests/golden NAME` only
for an intended change of results, and say why in the commit."""

from __future__ import annotations

from pathlib import Path

import pytest
from golden import MUTATIONS, differences, fingerprint, load

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("name", sorted(p.stem for p in GOLDEN.glob("*.json")))
def test_scenario_reproduces_its_golden_run(name):
    assert differences(load(GOLDEN, name), fingerprint(name)) == []


@pytest.mark.slow
@pytest.mark.parametrize("mutate", MUTATIONS, ids=lambda f: f.__name__)
def test_the_goldens_catch_a_changed_behaviour(mutate, monkeypatch):
    mutate(monkeypatch)
    found = differences(load(GOLDEN, "quickstart"), fingerprint("quickstart"))
    assert any(line.startswith("weights/") for line in found), found
