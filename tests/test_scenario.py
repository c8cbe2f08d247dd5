"""Scenario schema: loading, overrides, round trips."""

from __future__ import annotations

import tomllib

import pytest

from fedsim.errors import ScenarioError
from fedsim.scenario import Scenario, shipped_scenarios


def test_shipped_scenarios_load_and_round_trip():
    assert "quickstart" in shipped_scenarios()
    for name in shipped_scenarios():
        scenario = Scenario.load(name)
        again = Scenario.model_validate(scenario.model_dump())
        assert again == scenario
        assert Scenario.from_dict(tomllib.loads(scenario.to_toml())) == scenario


def test_overrides_are_typed_by_the_schema():
    s = Scenario.load("quickstart", ["data.partitioner.alpha=0.1", "run.rounds=5", "model.hidden=[8, 8]",
                                     "strategy.name=fedprox", "strategy.proximal_mu=0.5", "run.name=x y"])
    assert s.data.partitioner.alpha == 0.1 and isinstance(s.run.rounds, int) and s.run.rounds == 5
    assert s.model.hidden == [8, 8]
    assert s.strategy.params == {"proximal_mu": 0.5}
    assert s.run.name == "x y"
    assert Scenario.load("quickstart", {"client.lr": "0.5"}).client.lr == 0.5  # strings coerced


def test_with_overrides_keeps_the_rest():
    s = Scenario.load("quickstart")
    t = s.with_overrides({"run.seed": 7})
    assert t.run.seed == 7 and t.data == s.data and s.run.seed == 0


def test_strategy_parameters_are_checked_against_flower():
    with pytest.raises(ScenarioError, match="did you mean 'proximal_mu'"):
        Scenario.from_dict({"strategy": {"name": "fedprox", "proximal_m": 1.0}})
    with pytest.raises(ScenarioError, match="unknown strategy 'fedavgg'; did you mean 'fedavg'"):
        Scenario.from_dict({"strategy": {"name": "fedavgg"}})


def test_min_nodes_cannot_exceed_clients():
    with pytest.raises(ScenarioError, match="wait forever"):
        Scenario.from_dict({"data": {"partitioner": {"num_partitions": 3}}, "strategy": {"min_available_nodes": 4}})
