"""RayGrid: same results as inline, faults never hang a round, attaching to an existing cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch
from golden import measure, run_counting_steps, snapshot

import fedsim
from fedsim.errors import FedsimError
from fedsim.results import without_timings
from fedsim.runner import run_on_grid
from fedsim.runtime.ray_grid import RayGrid, pool_size
from fedsim.scenario import ResourcesSection
from fedsim.server import prepare

TESTS = Path(__file__).resolve().parents[1]  # tests/, where ray_helpers.py is


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray instance for the module; workers can import tests/ray_helpers.py."""
    marker = tmp_path_factory.mktemp("marker") / "died"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(TESTS), "FEDSIM_TEST_MARKER": str(marker)}})
    yield marker
    ray.shutdown()


def scenario_for_ray(small_scenario, **kw):
    settings = {"run__runtime": "ray", "strategy__fraction_train": 0.8, "strategy__fraction_evaluate": 0.4,
                "data__partitioner__name": "dirichlet", "data__partitioner__min_partition_size": 5}
    return small_scenario(**(settings | kw))


def run_with_app(scenario, out: Path, client_app: str):
    """fedsim.run, but with a test ClientApp on the Ray workers."""
    prepared = prepare(scenario)
    from fedsim.clients.workspace import ClientSpec

    grid = RayGrid(scenario.data.partitioner.num_partitions, ClientSpec.of(scenario).run_config(),
                   scenario.run.resources, client_app=client_app)
    try:
        return run_on_grid(prepared, grid, out, describe=grid.describe)
    finally:
        grid.close()


def test_ray_gives_bit_identical_metrics_to_inline(local_ray, tmp_path, small_scenario):
    """One client after another, Ray and inline compute the same thing: equal bits."""
    scenario = scenario_for_ray(small_scenario, run__vectorize=False)
    on_ray = fedsim.run(scenario, out=tmp_path / "ray")
    inline = fedsim.run(scenario.with_overrides({"run.runtime": "inline"}), out=tmp_path / "inline")
    assert without_timings(on_ray.metrics) == without_timings(inline.metrics)
    assert all(torch.equal(on_ray.state_dict[k], v) for k, v in inline.state_dict.items())
    assert on_ray.summary["runtime"]["kind"] == "ray" and on_ray.summary["runtime"]["actors"] == 2
    assert all(r["replies"] == 4 and "clients_eval" in r for r in on_ray.metrics)


@pytest.mark.slow  # make test keeps one Ray run: the one above
def test_ray_vectorised_equals_inline_within_float32_rounding(local_ray, tmp_path, small_scenario):
    """Vectorised, Ray stacks its chunks of clients otherwise than inline (all of a round), so a BLAS may round them
    differently: equal within float32 rounding of the steps taken (tests/golden.py)."""
    scenario = scenario_for_ray(small_scenario, run__vectorize=False)
    inline, steps = run_counting_steps(scenario.with_overrides({"run.runtime": "inline"}), out=tmp_path / "inline")
    vectorised = fedsim.run(scenario.with_overrides({"run.vectorize": True}), out=tmp_path / "ray-vectorised")
    assert vectorised.summary["runtime"]["vectorized_clients"] > 0
    assert measure(snapshot(inline, steps), snapshot(vectorised, steps))[0] == []


@pytest.mark.slow  # make test keeps one Ray run: bit-identical to inline
def test_a_dead_actor_is_replaced_and_its_work_retried(local_ray, tmp_path, small_scenario):
    scenario = scenario_for_ray(small_scenario)
    result = run_with_app(scenario, tmp_path / "run", "ray_helpers:dies_once")
    assert local_ray.exists()  # an actor really died
    assert result.summary["runtime"]["actor_retries"] == 1 and result.summary["failures"] == 0
    # run_with_app's grid trains one client at a time: so does the reference
    inline = fedsim.run(scenario.with_overrides({"run.runtime": "inline", "run.vectorize": False}),
                        out=tmp_path / "inline")
    assert without_timings(result.metrics) == without_timings(inline.metrics)


@pytest.mark.slow  # make test keeps one Ray run: bit-identical to inline
def test_a_raising_client_is_a_counted_failure(local_ray, tmp_path, small_scenario):
    scenario = scenario_for_ray(small_scenario, strategy__fraction_train=1.0)
    result = run_with_app(scenario, tmp_path / "run", "ray_helpers:raises")
    assert [r["failures"] for r in result.metrics] == [1, 1, 1]
    assert all(r["replies"] == 4 for r in result.metrics)
    assert "client 1 always fails" in result.metrics[0]["first_error"]


@pytest.mark.slow  # make test keeps one Ray run: bit-identical to inline
def test_a_stuck_client_is_bounded_by_the_round_timeout(local_ray, tmp_path, small_scenario):
    scenario = scenario_for_ray(small_scenario, strategy__fraction_train=1.0, strategy__fraction_evaluate=0.0,
                                run__round_timeout_s=8.0)
    result = run_with_app(scenario, tmp_path / "run", "ray_helpers:hangs")
    rows = result.metrics
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[0]["failures"] == 0 and rows[2]["failures"] == 0
    assert rows[1]["failures"] >= 1 and "timed out after 8 s" in rows[1]["first_error"]
    assert rows[1]["time_s"] < 30


def test_pool_size_from_resources():
    assert pool_size(ResourcesSection(), {"CPU": 2.0}) == 2
    assert pool_size(ResourcesSection(num_cpus=0.5, max_actors=3), {"CPU": 2.0}) == 3
    assert pool_size(ResourcesSection(num_gpus=0.25), {"CPU": 16.0, "GPU": 1.0}) == 4
    with pytest.raises(FedsimError, match="has none"):
        pool_size(ResourcesSection(num_gpus=0.5), {"CPU": 4.0})


@pytest.mark.slow  # make test keeps one Ray run: bit-identical to inline
def test_simulated_faults_are_identical_on_ray(local_ray, tmp_path, small_scenario):
    """Bit for bit with one reply per client (early reduction groups the mean's sums by actor: next test)."""
    scenario = scenario_for_ray(small_scenario, **{"faults.dropout_rate": 0.3, "faults.failure_rate": 0.2,
                                   "faults.straggler_rate": 0.3, "faults.straggler_delay_s": 0.01,
                                   "run.reduce_early": False})
    on_ray = fedsim.run(scenario, out=tmp_path / "ray")
    inline = fedsim.run(scenario.with_overrides({"run.runtime": "inline"}), out=tmp_path / "inline")
    assert without_timings(on_ray.metrics) == without_timings(inline.metrics)


@pytest.mark.slow  # make test keeps one Ray run: bit-identical to inline
def test_unlearning_on_ray_matches_inline(local_ray, tmp_path, small_scenario):
    """Client steps (train.unlearn), the partition query and retrain run on Ray actors with the same results."""
    raw = small_scenario(run__rounds=4, run__runtime="ray", run__reduce_early=False).to_dict()
    raw["unlearning"] = {"rounds": 1, "requests": [{"at_round": 2, "kind": "client", "target": 1,
                                                    "method": ["salun", "retrain", "federaser", "pga"]}]}
    scenario = fedsim.Scenario.from_dict(raw)
    on_ray = fedsim.run(scenario, out=tmp_path / "ray")
    inline = fedsim.run(scenario.with_overrides({"run.runtime": "inline"}), out=tmp_path / "inline")

    def untimed(rows):
        return [{k: v for k, v in r.items() if k not in ("time_s", "speedup")} for r in rows]

    assert untimed(on_ray.summary["unlearning"]) == untimed(inline.summary["unlearning"])
    assert without_timings(on_ray.metrics) == without_timings(inline.metrics)


@pytest.mark.slow  # make test keeps one Ray run: bit-identical to inline
@pytest.mark.parametrize("strategy", ["fedavg", "fedld"])
def test_each_actor_returns_one_partial_result_per_round(local_ray, tmp_path, small_scenario, monkeypatch, strategy):
    """Early reduction on Ray: the object store carries one partial per actor a round, not one model per client; the
    run equals inline within float rounding (the weighted mean's sums are grouped by actor; a BLAS may round a
    chunk of 2 stacked clients otherwise than one of 4, as without early reduction)."""
    from test_early_reduction import assert_same_within_rounding

    from fedsim.runtime.base import VirtualNodesGrid

    seen, original = [], VirtualNodesGrid.send_and_reduce

    def spy(self, messages, reduction, *, timeout=None):
        replies, partials = original(self, messages, reduction, timeout=timeout)
        seen.append((self.describe()["kind"], len(partials), sum(len(p.nodes) for p in partials)))
        return replies, partials

    monkeypatch.setattr(VirtualNodesGrid, "send_and_reduce", spy)
    scenario = scenario_for_ray(small_scenario, strategy__name=strategy, run__vectorize=True)
    on_ray = fedsim.run(scenario, out=tmp_path / "ray")
    inline = fedsim.run(scenario.with_overrides({"run.runtime": "inline"}), out=tmp_path / "inline")
    assert [s for s in seen if s[0] == "ray"] == [("ray", 2, 4)] * 3  # 4 clients a round, 2 actors
    assert [s for s in seen if s[0] == "inline"] == [("inline", 1, 4)] * 3
    assert_same_within_rounding(on_ray, inline)
