"""FedLD: principal-gradient aggregation against a loop transcription of docs/algorithms.md, edge cases, strategy,
loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fedsim
from fedsim.strategies.fedld import FedLD, principal_gradient_update
from fedsim.training import margin_penalty


def reference_layer(g: np.ndarray, k_proportion: float = 0.8) -> np.ndarray:
    """docs/algorithms.md (FedLD, the authors' loop), transcribed literally: loops over clients and directions."""
    m, d = g.shape
    if d == 1:
        return g.mean(axis=0)
    h = g @ g.T / m
    u, s, _ = np.linalg.svd(h)  # descending, as torch.svd in the reference
    k = int(m * k_proportion)
    v = [g.T @ u[:, j] for j in range(m)]
    for j in range(k):
        positive = sum(1 for i in range(m) if g[i] @ v[j] >= 0)
        if positive < m - positive:
            v[j] = -v[j]
    revised = []
    for i in range(m):
        g_tilde = np.zeros(d)
        for j in range(k):
            proj = (g[i] @ v[j]) / (v[j] @ v[j]) * v[j]
            g_tilde += s[j] / s.sum() * np.linalg.norm(g[i]) * proj / np.linalg.norm(proj)
        revised.append(g_tilde)
    return np.mean(revised, axis=0)


@pytest.mark.parametrize("m", [2, 5, 12, 30])
def test_matches_the_reference_loop(m):
    rng = np.random.default_rng(m)
    sizes = {"scalar": (1,), "tiny": (3,), "matrix": (20, 50), "big": (100_000,)}
    # a shared direction plus client noise, like real updates (a dominant principal direction)
    updates = [{name: rng.normal(0.3, 1.0, size) for name, size in sizes.items()} for _ in range(m)]
    ours = principal_gradient_update(updates)
    for name, size in sizes.items():
        g = np.stack([u[name].reshape(-1) for u in updates])
        expected = reference_layer(g).reshape(size)
        rel = np.abs(ours[name] - expected).max() / np.abs(expected).max()
        assert rel <= 1e-5, (name, m, rel)


def test_single_client_passes_through():
    g = {"w": np.array([[1.0, -2.0], [0.5, 3.0]]), "b": np.array([0.25])}
    out = principal_gradient_update([g])
    assert np.allclose(out["w"], g["w"]) and np.allclose(out["b"], g["b"])


def test_identical_clients_give_their_update():
    g = np.random.default_rng(0).normal(size=50)
    out = principal_gradient_update([{"w": g}] * 7)
    assert np.allclose(out["w"], g)


def test_zero_projections_and_zero_layers_stay_finite():
    orthogonal = [{"w": np.array([1.0, 0.0, 0.0])}, {"w": np.array([0.0, 1.0, 0.0])}]
    out = principal_gradient_update(orthogonal)
    assert np.isfinite(out["w"]).all()
    with np.errstate(all="ignore"):  # the reference divides 0 by 0 here
        assert not np.isfinite(reference_layer(np.stack([o["w"] for o in orthogonal]), 1.0)).all()
    zeros = principal_gradient_update([{"w": np.zeros(4)}] * 3)
    assert np.array_equal(zeros["w"], np.zeros(4))


def test_layers_with_fewer_entries_than_k():
    rng = np.random.default_rng(1)
    updates = [{"w": rng.normal(size=2)} for _ in range(12)]  # k = 9 > rank 2
    out = principal_gradient_update(updates)["w"]
    expected = reference_layer(np.stack([u["w"] for u in updates]))
    assert np.isfinite(out).all() and np.allclose(out, expected, rtol=1e-6, atol=1e-12)


def test_weighting_by_examples():
    rng = np.random.default_rng(2)
    updates = [{"w": rng.normal(size=30)} for _ in range(4)]
    uniform = principal_gradient_update(updates)["w"]
    same = principal_gradient_update(updates, weights=[5, 5, 5, 5])["w"]
    skewed = principal_gradient_update(updates, weights=[100, 1, 1, 1])["w"]
    assert np.allclose(uniform, same) and not np.allclose(uniform, skewed)


def test_margin_penalty_reductions():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    p = torch.softmax(z, dim=1)
    assert torch.isclose(margin_penalty(z, "batch"), torch.log1p((p**2).sum()))
    assert torch.isclose(margin_penalty(z, "mean"), torch.log1p((p**2).sum(1)).mean())


def test_fedld_configures_clients_and_keeps_history(tmp_path):
    strategy = FedLD(margin_lambda=0.3, margin_reduction="mean")
    from flwr.app import ArrayRecord, ConfigRecord

    from fedsim.runtime import InlineGrid

    config = ConfigRecord()
    messages = list(strategy.configure_train(1, ArrayRecord(), config, InlineGrid(None, 3, {})))
    sent = messages[0].content["config"]
    assert (sent["loss"], sent["margin-lambda"], sent["margin-reduction"]) == ("fedld-margin", 0.3, "mean")
    strategy.history = {"w": np.ones(2)}
    restored = FedLD()
    restored.load_state_dict(strategy.state_dict())
    assert np.array_equal(restored.history["w"], np.ones(2))


def test_fedld_runs_end_to_end_with_partial_participation(tmp_path, small_scenario):
    scenario = small_scenario(strategy__name="fedld", strategy__fraction_train=0.6, run__rounds=6,
                              data__partitioner__name="dirichlet", data__partitioner__min_partition_size=5,
                              client__local_epochs=2)
    result = fedsim.run(scenario, out=tmp_path / "run")
    accuracies = [r["eval"]["accuracy"] for r in result.metrics]
    assert all(r["replies"] == 3 for r in result.metrics)
    assert np.isfinite(accuracies).all() and accuracies[-1] > result.summary["initial"]["accuracy"] + 0.2
    assert all(np.isfinite(t.numpy()).all() for t in result.state_dict.values())
    differs = fedsim.run(scenario.with_overrides({"strategy.name": "fedavg"}), out=tmp_path / "avg")
    assert differs.metrics[-1]["eval"] != result.metrics[-1]["eval"]


def test_fedld_single_client_rounds(tmp_path, small_scenario):
    scenario = small_scenario(strategy__name="fedld", data__partitioner__num_partitions=3,
                              strategy__fraction_train=0.34, strategy__min_train_nodes=1, run__rounds=3)
    result = fedsim.run(scenario, out=tmp_path / "run")
    assert [r["replies"] for r in result.metrics] == [1, 1, 1]
    assert np.isfinite([r["eval"]["loss"] for r in result.metrics]).all()


def test_fedld_in_a_users_own_server_loop(small_scenario):
    """The README's programmatic use: FedLD().start(grid=...) with any Grid (here fedsim's InlineGrid)."""
    from flwr.app import ArrayRecord

    from fedsim.clients.app import app as client_app
    from fedsim.clients.workspace import ClientSpec
    from fedsim.data import federated_data
    from fedsim.models import initial_model
    from fedsim.runtime import InlineGrid

    scenario = small_scenario()
    grid = InlineGrid(client_app, 5, ClientSpec.of(scenario).run_config())
    model = initial_model(scenario.model, federated_data(scenario.data, 0).info, 0)
    strategy = FedLD(k_proportion=0.8, server_lr=1.0, margin_lambda=0.1, fraction_train=0.6, min_available_nodes=5)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=3)
    assert set(result.arrays.keys()) == set(model.state_dict().keys())
    assert strategy.history and all(np.isfinite(v).all() for v in strategy.history.values())


def test_a_degenerate_spectrum_gives_one_result_whatever_the_reply_order():
    """Orthogonal updates of equal norm: every eigenvalue ties, so the eigen-basis is the solver's choice and the
    principal directions (and signs) depend on the order the updates are stacked in. FedLD stacks replies in node
    order, so the order they arrive in does not matter; the same set in another stacking order does differ."""
    import random

    from flwr.app import ArrayRecord, ConfigRecord

    from fedsim.clients.app import train_reply
    from fedsim.runtime import InlineGrid

    m, d = 6, 8
    start = {"w": torch.zeros(d)}
    updates = torch.eye(d)[:m] * 0.5  # orthogonal, equal norms
    strategy = FedLD(k_proportion=0.5, fraction_train=1.0, min_available_nodes=m)
    strategy.history = {"w": np.zeros(d)}  # past the first round's plain mean
    messages = list(strategy.configure_train(2, ArrayRecord(start), ConfigRecord(), InlineGrid(None, m, {})))
    replies = [train_reply(msg, {"w": updates[msg.metadata.dst_node_id - min(x.metadata.dst_node_id
                                                                             for x in messages)]},
                           {"num-examples": 10.0}) for msg in messages]
    results = []
    for seed in range(4):
        random.Random(seed).shuffle(replies)
        strategy.history = {"w": np.zeros(d)}
        arrays, _ = strategy.aggregate_train(2, replies)
        results.append(arrays["w"].numpy())
    assert all(np.array_equal(r, results[0]) for r in results)
    stackings = {tuple(principal_gradient_update([{"w": u.numpy()} for u in updates[list(p)]], 0.5)["w"].round(12))
                 for p in ([0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [2, 0, 4, 1, 5, 3])}
    assert len(stackings) > 1  # without a fixed order the result would vary (what this test guards against)
