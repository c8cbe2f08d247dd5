"""The round pipeline: one federated round after another, with explicit hooks for everything cross-cutting.

`run_rounds` does what Flower's `Strategy.start` does (configure, send, aggregate; train then federated
evaluation; central evaluation after each round) and calls a list of `RoundCallback`s at fixed points. Seeded
sampling, the metrics recorder, the privacy ledger and budget, checkpoints and the unlearning history are each
one callback (see `fedsim.callbacks`); the strategy itself is any Flower strategy, left untouched.

Per round `r`, in this order:

    before_round(r)                   -> a reason to stop before the round, or None
    before_configure(r, "train")      then strategy.configure_train, grid.send_and_receive
    on_train_replies(r, replies)      every reply, errors included, before aggregation
    strategy.aggregate_train          (skipped when too few replies succeeded and failures are tolerated)

With `early` (fedsim.strategies.early.EARLY) and a Grid that can (`send_and_reduce`), the clients a Grid trains
together send one partial result per cohort (fedsim.reduction) where the strategy allows it; `on_train_replies`
still sees every client's reply (a reduced client's carries its metrics only), and the strategy aggregates the
partial results with what it gives on one reply per client (to float rounding).
    before_configure(r, "evaluate")   then configure_evaluate, send_and_receive, aggregate_evaluate
    central evaluation                -> row["eval"]
    round_metrics(r)                  -> fields each callback adds to the round's row
    after_round(r, arrays, row, stopping) -> a reason to stop after the round, or None
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.errors import ClientFailure
from fedsim.reduction import EarlyReduction

Phase = Literal["train", "evaluate"]
INTERRUPTED = "interrupted"  # LoopOutcome.stopped when the stop event ended the run early


class RoundCallback:
    """Hooks into the round pipeline; override the ones you need (each default does nothing).

    A callback with state that a resumed run needs implements `checkpoint_state()` / `restore_checkpoint(state)`.
    """

    def on_run_start(self, first_round: int, initial: dict[str, float] | None) -> None:
        """Before round `first_round`; `initial` is the central evaluation of the starting model (None when
        resuming: it was evaluated before the interruption)."""

    def before_round(self, server_round: int) -> str | None:
        """Return a reason to end the run before this round (e.g. the privacy budget), or None."""
        return None

    def before_configure(self, server_round: int, phase: Phase) -> None:
        """Right before the strategy's configure_train / configure_evaluate (e.g. seed its sampling)."""

    def on_train_replies(self, server_round: int, replies: list[Message]) -> None:
        """Every train reply of the round, errors included, before the strategy aggregates them."""

    def round_metrics(self, server_round: int) -> dict[str, Any]:
        """Fields to add to this round's metrics row (e.g. the privacy ledger)."""
        return {}

    def after_round(self, server_round: int, arrays: ArrayRecord, row: dict[str, Any], stopping: bool) -> str | None:
        """The round is complete and `row` is its metrics row; `stopping` says the run ends after it (a stop
        was requested by the time this callback is called: an earlier callback may request it). Return a
        reason to end the run now, or None."""
        return None

    def on_run_end(self) -> dict[str, Any]:
        """Entries to add to summary.json."""
        return {}


def clients_needed(strategy: Strategy) -> int:
    """The fewest clients a round of `strategy` runs with (its min_available_nodes and min_train_nodes; 1 for a
    strategy with neither). The scenario's defaults for them: StrategySection.node_minimums."""
    return max(1, getattr(strategy, "min_available_nodes", 1), getattr(strategy, "min_train_nodes", 1))


@dataclass
class LoopOutcome:
    arrays: ArrayRecord  # the global model after the last completed round
    last_round: int  # the last completed round (first_round - 1 if none completed)
    stopped: str | None  # why the run ended before its last round (INTERRUPTED: the stop event), if it did


def _is_set(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()


def _metrics(record: MetricRecord | None) -> dict[str, float]:
    return dict(record or {})


def _train(strategy: Strategy, grid: Grid, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
           timeout: float, callbacks: Sequence[RoundCallback], tolerate_failures: bool,
           row: dict[str, Any], early: EarlyReduction | None) -> ArrayRecord:
    """Configure, send, aggregate one training round; fills row's train / replies / failures fields."""
    for cb in callbacks:
        cb.before_configure(server_round, "train")
    messages = strategy.configure_train(server_round, arrays, config, grid)
    reduction = early.plan(strategy, server_round) if early is not None and hasattr(grid, "send_and_reduce") else None
    if reduction is not None:
        replies, partials = grid.send_and_reduce(messages, reduction, timeout=timeout)
    else:
        replies, partials = list(grid.send_and_receive(messages, timeout=timeout)), []
    for cb in callbacks:
        cb.on_train_replies(server_round, replies)
    errors = [m for m in replies if m.has_error()]
    good = len(replies) - len(errors)
    row.update(replies=good, failures=len(errors))
    if errors:
        row["first_error"] = errors[0].error.reason
    if tolerate_failures and getattr(strategy, "releases_every_round", False):
        pass  # a DP mechanism's accountant counts every round: it aggregates (adds its noise) whatever answered
    elif tolerate_failures and good < max(1, getattr(strategy, "min_train_nodes", 1)):
        row.update(skipped=True, train={})
        return arrays
    elif errors and not good:
        raise ClientFailure(f"round {server_round}", f"all {len(replies)} clients failed: {errors[0].error.reason}",
                            "fix the cause above and run again")
    new, metrics = aggregate(strategy, server_round, replies, partials, early)
    row["train"] = _metrics(metrics)
    return new if new is not None else arrays


def aggregate(strategy: Strategy, server_round: int, replies: list[Message], partials: list,
              early: EarlyReduction | None) -> tuple[ArrayRecord | None, MetricRecord | None]:
    """The round's aggregation: the strategy's aggregate_train on the replies, or on the cohorts' partial results."""
    if partials:
        return early.aggregate(strategy, server_round, replies, partials)
    return strategy.aggregate_train(server_round, replies)


def run_rounds(strategy: Strategy, grid: Grid, initial: ArrayRecord, *, first_round: int, last_round: int,
               train_config: ConfigRecord, evaluate_fn: Callable[[ArrayRecord], dict[str, float]],
               callbacks: Sequence[RoundCallback] = (), timeout: float | None = None,
               tolerate_failures: bool = False, stop: threading.Event | None = None,
               early: EarlyReduction | None = None) -> LoopOutcome:
    """Rounds `first_round`..`last_round` of `strategy` on `grid` from the global model `initial`.

    `evaluate_fn(arrays)` is the central evaluation. With `tolerate_failures` (simulated faults) a round with
    fewer good replies than the strategy's `min_train_nodes` is skipped (model unchanged), unless the strategy
    `releases_every_round` (client-level DP: its noise is added whatever answered); otherwise a round
    in which every client fails raises ClientFailure. A set `stop` event ends the run after the current round.
    `early`: aggregate cohorts' partial results where the strategy allows it (module docstring).
    """
    timeout = math.inf if timeout is None else timeout
    initial_metrics = evaluate_fn(initial) if first_round == 1 else None
    for cb in callbacks:
        cb.on_run_start(first_round, initial_metrics)
    arrays, evaluate_config = initial, ConfigRecord()
    for server_round in range(first_round, last_round + 1):
        reason = next((r for cb in callbacks if (r := cb.before_round(server_round)) is not None), None)
        if reason is not None:
            return LoopOutcome(arrays, server_round - 1, reason)
        row: dict[str, Any] = {"round": server_round}
        trained = {}
        arrays = _train(strategy, grid, server_round, arrays, train_config, timeout, callbacks, tolerate_failures,
                        trained, early)
        for cb in callbacks:
            cb.before_configure(server_round, "evaluate")
        evaluate_replies = grid.send_and_receive(
            strategy.configure_evaluate(server_round, arrays, evaluate_config, grid), timeout=timeout)
        clients_eval = strategy.aggregate_evaluate(server_round, evaluate_replies)
        row.update(train=trained.pop("train", {}), eval=evaluate_fn(arrays))
        if clients_eval is not None:
            row["clients_eval"] = _metrics(clients_eval)
        row.update(trained)
        for cb in callbacks:
            row.update(cb.round_metrics(server_round))
        more = server_round < last_round
        reasons = [cb.after_round(server_round, arrays, row, more and _is_set(stop)) for cb in callbacks]
        reason = INTERRUPTED if more and _is_set(stop) else next((r for r in reasons if r is not None), None)
        if reason is not None:
            return LoopOutcome(arrays, server_round, reason)
    return LoopOutcome(arrays, last_round, None)
