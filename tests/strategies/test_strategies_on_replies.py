"""fedsim's strategies on hand-built replies (no federation): what aggregate_train returns equals the definition
computed directly from the replies' arrays (docs/algorithms.md)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedsim.runtime import InlineGrid
from fedsim.strategies.fedld import FedLD, principal_gradient_update

GLOBAL = {"w": np.array([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]], dtype=np.float32), "steps": np.array([4])}


def sent_messages(strategy, clients: int):
    record = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    return list(strategy.configure_train(1, record, ConfigRecord(), InlineGrid(None, clients, {})))


def client_states(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"w": (GLOBAL["w"] + rng.normal(0, 0.3, GLOBAL["w"].shape)).astype(np.float32),
             "steps": GLOBAL["steps"] + i} for i in range(n)]


def updates_of(states):
    return [{k: s[k].astype(np.float64) - GLOBAL[k] for k in GLOBAL} for s in states]


@pytest.mark.parametrize("weighting", ["uniform", "num-examples"])
def test_fedld_first_round_applies_the_plain_mean_then_the_principal_gradient(reply, weighting):
    strategy = FedLD(server_lr=2.0, weighting=weighting, fraction_train=1.0, min_train_nodes=1,
                     min_available_nodes=1)
    sent = sent_messages(strategy, 4)
    states, sizes = client_states(len(sent)), [3, 1, 5, 7]
    replies = [reply(m, s, num_examples=n) for m, s, n in zip(sent, states, sizes)]
    arrays, _ = strategy.aggregate_train(1, replies)
    share = np.full(4, 0.25) if weighting == "uniform" else np.asarray(sizes) / sum(sizes)
    mean = sum(t * u["w"] for t, u in zip(share, updates_of(states)))
    np.testing.assert_allclose(arrays["w"].numpy(), GLOBAL["w"] + 2.0 * mean, rtol=1e-6)
    assert arrays["steps"].numpy().dtype == GLOBAL["steps"].dtype  # integer buffers stay integers, rounded
    np.testing.assert_array_equal(arrays["steps"].numpy(), np.rint(GLOBAL["steps"] + 2.0 * share @ np.arange(4)))

    # with a history, the principal-gradient update of the same replies
    states = client_states(len(sent), seed=1)
    replies = [reply(m, s, num_examples=n) for m, s, n in zip(sent_messages(strategy, 4), states, sizes)]
    arrays, _ = strategy.aggregate_train(2, replies)
    expected = principal_gradient_update(updates_of(states), strategy.k_proportion,
                                         None if weighting == "uniform" else sizes)
    np.testing.assert_allclose(arrays["w"].numpy(), GLOBAL["w"] + 2.0 * expected["w"], rtol=1e-6)


def test_fedld_leaves_error_replies_out(reply):
    strategy = FedLD(fraction_train=1.0, min_train_nodes=1, min_available_nodes=1)
    sent = sent_messages(strategy, 3)
    states = client_states(3)
    with_error = [reply(sent[0], states[0]), reply(sent[1], error="client crashed"), reply(sent[2], states[2])]
    arrays, _ = strategy.aggregate_train(1, with_error)
    mean = (updates_of(states)[0]["w"] + updates_of(states)[2]["w"]) / 2
    np.testing.assert_allclose(arrays["w"].numpy(), GLOBAL["w"] + mean, rtol=1e-6)
    assert strategy.aggregate_train(1, [reply(sent[1], error="all failed")]) == (None, None)
