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


def test_sections_with_kinds_keep_only_their_own_keys(tmp_path):
    scenario = Scenario.load("quickstart")  # dirichlet
    dumped = scenario.to_dict()["data"]["partitioner"]
    assert set(dumped) == {"name", "num_partitions", "alpha", "min_partition_size", "self_balancing"}
    iid = scenario.with_overrides({"data.partitioner": {"name": "iid", "num_partitions": 4}})
    assert iid.to_dict()["data"]["partitioner"] == {"name": "iid", "num_partitions": 4}
    dp = Scenario.load("dp-sgd")
    assert "q" not in dp.to_dict()["privacy"] and "max_grad_norm" in dp.to_dict()["privacy"]


def test_a_run_dir_written_before_kinds_still_loads(tmp_path):
    """Older run dirs list every partitioner and privacy key; those of other kinds are dropped on reading."""
    old = Scenario.load("client-dp").to_dict()
    old["data"]["partitioner"].update(alpha=0.5, min_partition_size=10, self_balancing=False, classes_per_partition=2,
                                      class_assignment="random", shards_per_partition=2)
    old["privacy"].update(max_grad_norm=1.0, fix_model=False)
    import tomli_w

    path = tmp_path / "scenario.toml"
    path.write_text(tomli_w.dumps(old))
    with pytest.raises(ScenarioError, match="unknown key"):
        Scenario.from_toml(path)
    assert Scenario.from_run_dir(path) == Scenario.load("client-dp")


def test_an_override_that_changes_the_kind_drops_the_old_kinds_keys():
    switched = Scenario.load("quickstart", ["data.partitioner.name=pathological",
                                            "data.partitioner.classes_per_partition=3"])  # quickstart is dirichlet
    assert switched.to_dict()["data"]["partitioner"] == {"name": "pathological", "num_partitions": 20,
                                                         "classes_per_partition": 3, "class_assignment": "random"}
    with pytest.raises(ScenarioError, match="unknown key 'alpha' for partitioner 'iid'"):
        Scenario.load("quickstart", ["data.partitioner.name=iid", "data.partitioner.alpha=0.3"])
