"""DP-SGD and client-level DP in training: clipping, noise scale, composition across rounds, hard budgets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from torch import nn

import fedsim
from fedsim._flower import assign_message_id
from fedsim.arrays import state_to_record
from fedsim.errors import FedsimError
from fedsim.features.dp_sgd import train_dp_sgd
from fedsim.privacy import epsilon_of
from fedsim.protocol import LocalTraining
from fedsim.runtime import InlineGrid
from fedsim.scenario import DPSGDPrivacy
from fedsim.strategies.dp_fedavg import PoissonDPFedAvg

ONE_STEP = LocalTraining(local_epochs=1, batch_size=1000, lr=1.0, momentum=0.0)  # q = 1: one full-batch step


def dp(noise: float, clip: float) -> DPSGDPrivacy:
    return DPSGDPrivacy(mode="dp-sgd", noise_multiplier=noise, max_grad_norm=clip)


def test_per_example_gradients_are_clipped():
    """200 identical examples with huge gradients: each is clipped to C, so the (noise-free) step has norm lr * C."""
    model = torch.nn.Linear(20, 1)
    x, y = torch.ones(200, 20), torch.full((200,), 1e4)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    train_dp_sgd(model, x, y, ONE_STEP, "regression", seed=0, sigma=1e-9, privacy=dp(1e-9, 0.5), history=[])
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm().item() == pytest.approx(0.5, rel=1e-4)


def test_noise_has_the_accountants_scale():
    """With zero gradients the step is pure noise: std sigma * C / (expected batch size) per coordinate."""
    model = torch.nn.Linear(5000, 1)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    x, y = torch.zeros(100, 5000), torch.zeros(100)  # regression at the optimum: every gradient is 0
    sigma, clip = 2.0, 3.0
    train_dp_sgd(model, x, y, ONE_STEP, "regression", seed=1, sigma=sigma, privacy=dp(sigma, clip), history=[])
    noise = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()
    assert noise.std() == pytest.approx(sigma * clip / 100, rel=0.03) and abs(noise.mean()) < 0.01


def test_client_dp_noise_and_clipping():
    grid = InlineGrid(None, 50, {})
    node_ids = grid.get_node_ids()
    zeros = {"w": torch.zeros(20_000)}
    strategy = PoissonDPFedAvg(noise_multiplier=1.5, clipping_norm=2.0, sample_rate=0.2, seed=3)
    messages = list(strategy.configure_train(1, state_to_record(zeros), ConfigRecord(), grid))
    assert 0 < len(messages) < 50 and {m.metadata.dst_node_id for m in messages} <= set(node_ids)
    replies = [Message(RecordDict({"arrays": state_to_record(zeros), "metrics": MetricRecord({"num-examples": 1})}),
                       reply_to=_delivered(m)) for m in messages]
    arrays, _ = strategy.aggregate_train(1, replies)
    delta = arrays["w"].numpy()
    assert delta.std() == pytest.approx(1.5 * 2.0 / (0.2 * 50), rel=0.03)  # sigma C / (q N)
    # a huge update is clipped to C before the (here negligible) noise
    strategy = PoissonDPFedAvg(noise_multiplier=1e-9, clipping_norm=2.0, sample_rate=1.0, seed=3)
    messages = list(strategy.configure_train(1, state_to_record(zeros), ConfigRecord(), grid))
    big = {"w": torch.full((20_000,), 100.0)}
    replies = [Message(RecordDict({"arrays": state_to_record(big), "metrics": MetricRecord({"num-examples": 1})}),
                       reply_to=_delivered(messages[0]))]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert np.linalg.norm(arrays["w"].numpy()) == pytest.approx(2.0 / 50, rel=1e-5)


def _delivered(msg: Message) -> Message:
    assign_message_id(msg, f"m{msg.metadata.dst_node_id}")
    return msg


def test_dp_sgd_epsilon_composes_over_rounds(tmp_path, small_scenario):
    scenario = small_scenario(run__rounds=3, **{"privacy.mode": "dp-sgd", "privacy.noise_multiplier": 1.1,
                                                "privacy.max_grad_norm": 1.0})
    result = fedsim.run(scenario, out=tmp_path / "run")
    ledgers = [row["privacy"] for row in result.metrics]
    assert [lg["epsilon"] for lg in ledgers] == sorted(lg["epsilon"] for lg in ledgers)  # grows every round
    last = ledgers[-1]
    assert last["epsilon"] == pytest.approx(
        epsilon_of([(1.1, last["sample_rate"], last["steps"])], 1e-5), rel=1e-9)
    assert result.summary["privacy"] == last and {"delta", "accountant", "noise_multiplier"} <= set(last)


def test_dp_sgd_budget_retires_clients_and_never_exceeds(tmp_path, small_scenario):
    scenario = small_scenario(run__rounds=8, **{"privacy.mode": "dp-sgd", "privacy.noise_multiplier": 1.0,
                                                "privacy.target_epsilon": 6.0})
    result = fedsim.run(scenario, out=tmp_path / "run")
    assert result.summary["stopped"].startswith("privacy budget")
    assert len(result.metrics) < 8
    assert all(row["privacy"]["epsilon"] <= 6.0 for row in result.metrics)


def test_dp_sgd_noise_from_target_epsilon(tmp_path, small_scenario):
    scenario = small_scenario(run__rounds=3, **{"privacy.mode": "dp-sgd", "privacy.target_epsilon": 3.0})
    result = fedsim.run(scenario, out=tmp_path / "run")
    assert len(result.metrics) == 3 and "stopped" not in result.summary
    assert result.summary["privacy"]["epsilon"] <= 3.0


def test_client_dp_stops_before_the_budget(tmp_path, small_scenario):
    scenario = small_scenario(run__rounds=10, **{"privacy.mode": "client-dp", "privacy.noise_multiplier": 1.0,
                                                 "privacy.q": 0.6, "privacy.target_epsilon": 5.0})
    result = fedsim.run(scenario, out=tmp_path / "run")
    rounds = len(result.metrics)
    assert 0 < rounds < 10 and result.summary["stopped"].startswith("privacy budget")
    assert result.summary["privacy"]["epsilon"] <= 5.0
    assert epsilon_of([(1.0, 0.6, rounds + 1)], 1e-5) > 5.0  # one more round would have exceeded it
    assert math.isfinite(result.final["loss"])


def test_fix_model_swaps_batch_norm_for_dp_sgd(tmp_path, small_scenario):
    scenario = small_scenario(run__rounds=2, model__name="cnn", model__batch_norm=True,
                              **{"privacy.mode": "dp-sgd", "privacy.noise_multiplier": 1.0, "privacy.fix_model": True})
    result = fedsim.run(scenario, out=tmp_path / "run")
    assert len(result.metrics) == 2 and not any("running_mean" in k for k in result.state_dict)


def test_a_private_run_releases_nothing_its_epsilon_does_not_cover(tmp_path, small_scenario):
    """Clients' training loss / accuracy and federated evaluation are not covered by epsilon: withheld by
    default; with privacy.report_uncovered they are released and the ledger lists them."""
    private = {"privacy__mode": "client-dp", "privacy__q": 0.8, "privacy__noise_multiplier": 0.5, "run__rounds": 2}
    result = fedsim.run(small_scenario(**private), out=tmp_path / "withheld")
    assert all(r["train"] == {} and "clients_eval" not in r for r in result.metrics)
    assert "uncovered" not in result.summary["privacy"]
    with pytest.raises(FedsimError, match="strategy.fraction_evaluate > 0 evaluates on clients' private data"):
        small_scenario(**private, strategy__fraction_evaluate=0.5)
    released = fedsim.run(small_scenario(**private, privacy__report_uncovered=True, strategy__fraction_evaluate=0.5),
                          out=tmp_path / "released")
    assert {"loss", "accuracy"} <= set(released.metrics[-1]["train"]) and "clients_eval" in released.metrics[-1]
    assert released.summary["privacy"]["uncovered"] == ["clients' training loss and accuracy",
                                                        "federated evaluation on clients' data"]
    dp_sgd = fedsim.run(small_scenario(privacy__mode="dp-sgd", privacy__noise_multiplier=1.0, run__rounds=1),
                        out=tmp_path / "dp-sgd")
    assert set(dp_sgd.metrics[0]["train"]) == {"epsilon", "epsilon-next", "noise-multiplier", "sample-rate", "steps"}


def test_dp_sgd_runs_exactly_the_planned_steps_the_epsilon_counts():
    """Opacus's Poisson loader runs int(1 / q) batches an epoch: 92 for b = 93 batches. The client runs b, and
    the accountant's history holds exactly the (sigma, q, steps) the reported epsilon was computed for."""
    x, y = torch.randn(93, 3), torch.randn(93)
    cfg = LocalTraining(local_epochs=2, batch_size=1, lr=0.01)
    metrics, history = train_dp_sgd(nn.Linear(3, 1), x, y, cfg, "regression", seed=0, sigma=1.0,
                                    privacy=dp(1.0, 1.0), history=[])
    assert metrics["steps"] == 186 and sum(t for _, _, t in history) == 186
    assert metrics["epsilon"] == pytest.approx(epsilon_of([(1.0, 1 / 93, 186)], 1e-5))


def test_clients_of_one_size_share_one_noise_search(tmp_path, monkeypatch, small_scenario):
    """DP-SGD with a target epsilon: the noise search runs once per distinct (q, steps), not once per client
    (10 equal IID clients: one search, where each took ~0.6 s)."""
    import opacus.accountants.utils as opacus_utils

    from fedsim.privacy import noise_multiplier

    calls = []
    original = opacus_utils.get_noise_multiplier
    monkeypatch.setattr(opacus_utils, "get_noise_multiplier", lambda **kw: calls.append(kw) or original(**kw))
    noise_multiplier.cache_clear()
    scenario = small_scenario(run__rounds=1, data__partitioner__num_partitions=10).with_overrides(
        {"privacy": {"mode": "dp-sgd", "target_epsilon": 8.0, "max_grad_norm": 1.0}})
    fedsim.run(scenario, out=tmp_path / "run")
    sizes = {round(1 / c["sample_rate"]) for c in calls}
    assert len(calls) == len(sizes) == 1


def test_client_dp_under_faults_adds_noise_every_round_and_accounts_what_ran(tmp_path):
    """With [faults] a round whose sampled clients all dropped (or too few answered) is still a release: noise is
    added and the model moves, so the run is T subsampled Gaussians, the mechanism the ledger accounts. Its RDP
    epsilon bounds dp-accounting's PLD epsilon of that mechanism from above (before the fix, rounds 2, 7 and 8 of
    this run were skipped without noise and the ledger's 1.962 fell below the mechanism's >= 2.305)."""
    import dp_accounting

    from fedsim.loop import RoundCallback

    class Moves(RoundCallback):
        def __init__(self):
            self.models = []

        def after_round(self, server_round, arrays, row, stopping):
            self.models.append(np.concatenate([a.numpy().ravel() for a in arrays.values()]))

    settings = {"run.rounds": 8, "data.partitioner.num_partitions": 10, "privacy.q": 0.1,
                "privacy.noise_multiplier": 1.0, "faults.straggler_rate": 0.01, "faults.dropout_rate": 0.3}
    moves = Moves()
    result = fedsim.run(fedsim.Scenario.load("client-dp", settings), out=tmp_path / "run", callbacks=[moves])
    assert len(result.metrics) == 8 and not any(row.get("skipped") for row in result.metrics)
    assert any(row["replies"] < 2 for row in result.metrics)  # rounds the old rule skipped are here, and released
    assert all(not np.array_equal(a, b) for a, b in zip(moves.models, moves.models[1:]))  # noise moved each round
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0)), 8)
    pld = dp_accounting.pld.PLDAccountant().compose(event).get_epsilon(1e-3)
    ledger = result.summary["privacy"]["epsilon"]
    assert result.summary["privacy"]["steps"] == 8 and pld <= ledger  # RDP: an upper bound of the PLD epsilon
