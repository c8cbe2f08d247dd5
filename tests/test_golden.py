"""Behaviour is pinned: a few short shipped scenarios give exactly the recorded metrics, summary and final
weights (timings aside). Re-record with `python tests/golden.py record tests/golden NAME` only for an intended
change of results, and say why in the commit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from golden import differences, fingerprint

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.stem)
def test_scenario_reproduces_its_golden_run(path):
    assert differences(json.loads(path.read_text()), fingerprint(path.stem)) == []
