"""Simulated unreliable clients ([faults]): dropouts, failures, stragglers; short rounds are skipped, never hang."""

from __future__ import annotations

import time

import fedsim
from fedsim.results import without_timings


def run(small_scenario, tmp_path, name, **faults):
    scenario = small_scenario(run__rounds=6, **{f"faults.{k}": v for k, v in faults.items()})
    return fedsim.run(scenario, out=tmp_path / name)


def test_dropouts_answer_nothing(tmp_path, small_scenario):
    result = run(small_scenario, tmp_path, "drop", dropout_rate=0.4)
    dropped = sum(r["faults"]["dropped"] for r in result.metrics)
    assert dropped > 0 and all(r["failures"] == 0 for r in result.metrics)
    assert all(r["replies"] + r["faults"]["dropped"] == 5 for r in result.metrics)


def test_failures_are_error_replies(tmp_path, small_scenario):
    result = run(small_scenario, tmp_path, "fail", failure_rate=0.4)
    assert sum(r["faults"]["failed"] for r in result.metrics) == sum(r["failures"] for r in result.metrics) > 0
    assert any("simulated failure" in r.get("first_error", "") for r in result.metrics)


def test_stragglers_advance_the_simulated_clock_without_waiting(tmp_path, small_scenario):
    """A 100 s straggler costs no wall time: each round's sim_time_s is its slowest answer (0 without one)."""
    start = time.perf_counter()
    result = run(small_scenario, tmp_path, "slow", straggler_rate=0.5, straggler_delay_s=100.0)
    assert time.perf_counter() - start < 60
    straggled = [r["faults"]["straggled"] for r in result.metrics]
    assert sum(straggled) > 0 and all(r["replies"] == 5 for r in result.metrics)
    assert [r["faults"]["sim_time_s"] for r in result.metrics] == [100.0 if s else 0.0 for s in straggled]


def test_a_straggler_past_the_simulated_deadline_counts_as_failed(tmp_path, small_scenario):
    result = run(small_scenario, tmp_path, "late", straggler_rate=0.5, straggler_delay_s=100.0, deadline_s=30.0)
    late = [r["faults"]["late"] for r in result.metrics]
    assert sum(late) > 0 and [r["failures"] for r in result.metrics] == late
    assert all(r["replies"] + r["faults"]["late"] == 5 for r in result.metrics)  # a late answer is a failure
    assert all(r["faults"]["sim_time_s"] == (30.0 if n else 0.0) for r, n in zip(result.metrics, late))
    assert any("missed the simulated deadline" in r.get("first_error", "") for r in result.metrics)


def test_real_clock_stragglers_sleep(tmp_path, small_scenario):
    start = time.perf_counter()
    result = run(small_scenario, tmp_path, "real", straggler_rate=0.5, straggler_delay_s=0.05, straggler_clock="real")
    straggled = sum(r["faults"]["straggled"] for r in result.metrics)
    assert straggled > 0 and time.perf_counter() - start >= 0.05 * straggled


def test_rounds_below_the_minimum_are_skipped(tmp_path, small_scenario):
    result = run(small_scenario, tmp_path, "skip", dropout_rate=0.8)
    skipped = [r for r in result.metrics if r.get("skipped")]
    assert skipped and all(r["replies"] < 2 for r in skipped)
    assert len(result.metrics) == 6  # the run goes on
    for before, row in zip(result.metrics, result.metrics[1:]):
        if row.get("skipped"):
            assert row["eval"] == before["eval"]  # the global model did not change


def test_faults_are_seeded(tmp_path, small_scenario):
    a = run(small_scenario, tmp_path, "a", dropout_rate=0.3, failure_rate=0.2)
    b = run(small_scenario, tmp_path, "b", dropout_rate=0.3, failure_rate=0.2)
    assert without_timings(a.metrics) == without_timings(b.metrics)
