"""The round pipeline: callbacks see the hooks in order and stop runs by returning a reason; a user's own Flower
strategy gets every fedsim feature by being passed in, and is never modified."""

from __future__ import annotations

import threading

import pytest
from flwr.serverapp.strategy import FedAvg

import fedsim
from fedsim.loop import RoundCallback
from fedsim.results import without_timings

HOOKS = {"configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate", "summary", "start"}


class StopAtAccuracy(RoundCallback):
    """docs/extending.md's worked example, verbatim."""

    def __init__(self, target: float) -> None:
        self.target, self.best = target, 0.0

    def round_metrics(self, server_round):
        return {"best_accuracy": self.best}  # added to the row before after_round sees it

    def after_round(self, server_round, arrays, row, stopping):
        self.best = max(self.best, row["eval"]["accuracy"])
        row["best_accuracy"] = self.best
        if self.best >= self.target:
            return f"accuracy {self.best:.3f} reached the target {self.target}"  # stops the run
        return None


class Trace(RoundCallback):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_run_start(self, first_round, initial):
        self.calls.append(("start", first_round, initial is not None))

    def before_round(self, server_round):
        self.calls.append(("before_round", server_round))

    def before_configure(self, server_round, phase):
        self.calls.append(("configure", server_round, phase))

    def on_train_replies(self, server_round, replies):
        self.calls.append(("replies", server_round, len(replies)))

    def round_metrics(self, server_round):
        self.calls.append(("metrics", server_round))
        return {"traced": server_round}

    def after_round(self, server_round, arrays, row, stopping):
        self.calls.append(("after", server_round, row["traced"], "eval" in row, stopping))

    def on_run_end(self):
        self.calls.append(("end",))
        return {"trace_calls": len(self.calls)}


def test_hooks_are_called_in_order_and_add_to_rows_and_summary(tmp_path, small_scenario):
    trace = Trace()
    result = fedsim.run(small_scenario(run__rounds=2), out=tmp_path / "run", callbacks=[trace])
    per_round = lambda r: [("before_round", r), ("configure", r, "train"), ("replies", r, 5),
                           ("configure", r, "evaluate"), ("metrics", r), ("after", r, r, True, False)]
    assert trace.calls == [("start", 1, True), *per_round(1), *per_round(2), ("end",)]
    assert [r["traced"] for r in result.metrics] == [1, 2]
    assert result.summary["trace_calls"] == len(trace.calls)


def test_the_documented_callback_stops_the_run(tmp_path, small_scenario):
    result = fedsim.run(small_scenario(run__rounds=10), out=tmp_path / "run", callbacks=[StopAtAccuracy(0.6)])
    rows = result.metrics
    assert rows[-1]["best_accuracy"] >= 0.6 > max(r["eval"]["accuracy"] for r in rows[:-1])
    assert result.summary["rounds"] == len(rows) < 10
    assert result.summary["stopped"].startswith("accuracy") and (tmp_path / "run" / "summary.json").is_file()


def test_a_stop_event_ends_the_run_after_the_round_with_a_checkpoint(tmp_path, small_scenario):
    from fedsim.server import Interrupted

    stop = threading.Event()
    with pytest.raises(Interrupted, match="after round 2"):
        fedsim.run(small_scenario(run__rounds=4), out=tmp_path / "run",
                   on_round=lambda row: row["round"] == 2 and stop.set(), stop=stop)
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and not (tmp_path / "run" / "summary.json").exists()


def test_a_users_own_flower_strategy_gets_every_feature_and_is_not_modified(tmp_path, small_scenario):
    scenario = small_scenario(run__rounds=3, strategy__fraction_train=0.6,
                              faults__dropout_rate=0.2, faults__failure_rate=0.1)
    own = FedAvg(fraction_train=0.6, fraction_evaluate=0.0, min_train_nodes=2, min_evaluate_nodes=0,
                 min_available_nodes=2)
    before = dict(vars(own))
    mine = fedsim.run(scenario, out=tmp_path / "own", strategy=own)
    theirs = fedsim.run(scenario, out=tmp_path / "scenario")
    assert without_timings(mine.metrics) == without_timings(theirs.metrics)  # same sampling, faults, results
    assert all("faults" in r for r in mine.metrics)
    assert vars(own).keys() == before.keys() and not HOOKS & vars(own).keys()


def test_no_strategy_method_is_replaced_during_a_run(tmp_path, small_scenario):
    from fedsim.server import prepare

    scenario = small_scenario(run__rounds=3, privacy__mode="client-dp", privacy__q=0.6,
                              privacy__noise_multiplier=0.5)
    strategy = prepare(scenario).strategy
    fedsim.run(scenario, out=tmp_path / "run", strategy=strategy)
    assert not HOOKS & vars(strategy).keys()  # no instance attribute shadows a Strategy method


def test_a_run_leaves_flowers_logger_as_it_found_it(tmp_path, small_scenario):
    import logging

    import fedsim

    logger = logging.getLogger("flwr")
    before = logger.level
    logger.setLevel(logging.INFO)
    try:
        fedsim.run(small_scenario(run__rounds=1), out=tmp_path / "run")
        assert logger.level == logging.INFO  # a user's own ServerApp afterwards still logs
    finally:
        logger.setLevel(before)
