"""Which strategies aggregate a cohort's partial result (fedsim.reduction) instead of one reply per client, and how.

By exact class, never guessed: Flower's strategies whose aggregation is the weighted mean of the replies' arrays
(WEIGHTED_MEAN, their own `aggregate_train` then runs unmodified on one reply per cohort), and strategies that
declare it by defining `reduction(server_round)` and `aggregate_partials(server_round, replies, partials)` in their
own class body (fedsim's FedLD, DP-FedAvg, the unlearning wrapper). A subclass that does not declare it again (a
user's FedAvg with its own aggregation, FedMedian, Krum, FedTrimmedAvg) keeps one reply per client.
"""

from __future__ import annotations

from flwr.app import Message
from flwr.serverapp import strategy as flower

from fedsim.reduction import MEAN, EarlyReduction, Partial, Reduction, group_message, split_replies

WEIGHTED_MEAN = (flower.FedAvg, flower.FedProx, flower.FedAvgM, flower.FedAdam, flower.FedYogi, flower.FedAdagrad)


def declares(strategy: flower.Strategy) -> bool:
    """Whether the strategy's own class (not a parent) aggregates partial results."""
    return "aggregate_partials" in type(strategy).__dict__


def reduction_for(strategy: flower.Strategy, server_round: int) -> Reduction | None:
    """What a cohort of `strategy`'s clients sends in this round (None: one reply per client)."""
    if type(strategy) in WEIGHTED_MEAN:
        return Reduction(MEAN, strategy.weighted_by_key)
    return strategy.reduction(server_round) if declares(strategy) else None


def aggregate(strategy: flower.Strategy, server_round: int, replies: list[Message], partials: list[Partial]):
    """`strategy.aggregate_train`'s result for these replies (every client's, those of reduced cohorts with metrics
    only) and the cohorts' partial results."""
    if not partials:
        return strategy.aggregate_train(server_round, replies)
    if type(strategy) in WEIGHTED_MEAN:
        key = strategy.weighted_by_key
        _, own = split_replies(replies, partials, key)
        groups = [group_message(p, strategy.arrayrecord_key, key) for p in partials]
        return strategy.aggregate_train(server_round, groups + own)
    return strategy.aggregate_partials(server_round, replies, partials)


EARLY = EarlyReduction(reduction_for, aggregate)
