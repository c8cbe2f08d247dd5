"""Aggregate responses: bags, the closed-form estimators against the paper's corollaries, the Laplace release."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.bag_theory import (
    bag_targets,
    clip_bound,
    interpolating_linear_estimator,
    make_bags,
    optimal_bag_size,
    predicted_risk,
    release,
    risk_terms,
)
from fedsim.features.bags import bag_loss


def test_make_bags_partitions_at_random():
    rng = np.random.default_rng(0)
    bags = make_bags(103, 5, rng)
    assert bags.shape == (20, 5) and len(np.unique(bags)) == 100 and bags.max() < 103
    assert not np.array_equal(bags, np.arange(100).reshape(20, 5))  # random, not contiguous
    assert np.array_equal(make_bags(7, 1, rng), np.arange(7)[:, None])  # k = 1: every example its own bag


def _monte_carlo(n: int, d: int, k: int, rho: float, theta_scale: float, reps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    risks = []
    for _ in range(reps):
        theta = rng.normal(size=d) * theta_scale
        x = rng.normal(size=(n, d))
        y = x @ theta + rng.normal(size=n)  # noise variance 1
        bags = make_bags(n, k, rng)
        est = interpolating_linear_estimator(x, y[bags].mean(axis=1), bags, rho)
        risks.append(np.sum((est - theta) ** 2))
    return float(np.mean(risks))


@pytest.mark.parametrize("k", [2, pytest.param(5, marks=pytest.mark.slow)])  # Monte Carlo, ~2 s each
def test_bag_level_risk_matches_the_corollary(k):
    n, d = 6000, 50
    m = n // k
    expected = d / (m - d - 1)  # sigma^2 d / (m - d - 1), unbiased
    assert _monte_carlo(n, d, k, rho=0.0, theta_scale=1.0, reps=200, seed=k) == pytest.approx(expected, rel=0.10)
    assert predicted_risk(n, d, k, 0.0, snr=0.0) == pytest.approx(expected)


@pytest.mark.parametrize("k", [2, pytest.param(5, marks=pytest.mark.slow)])  # Monte Carlo, ~2 s each
def test_instance_level_variance_matches_the_corollary(k):
    n, d = 6000, 50
    psi = n / d
    variance = _monte_carlo(n, d, k, rho=1.0, theta_scale=0.0, reps=200, seed=10 + k)  # theta = 0: no bias
    assert variance == pytest.approx(1 / (k * (psi - 1)), rel=0.15)
    assert predicted_risk(n, d, k, 1.0, snr=0.0) == pytest.approx(1 / (k * (psi - 1)), rel=0.02)


@pytest.mark.parametrize(("n", "d", "k", "theta_sq"), [(2000, 20, 4, 4.0),
                                                       pytest.param(6000, 50, 5, 1.0, marks=pytest.mark.slow)])
def test_instance_level_variance_with_a_nonzero_theta_includes_the_random_design_term(n, d, k, theta_sq):
    """At rho = 1 the estimator's mean is exactly theta / k (rows are exchangeable), so E|theta_1 - theta / k|^2 is
    its variance: the response noise's part plus the random-design part the corollary leaves out (here 1.8-4x
    the corollary alone, which the old predictor returned)."""
    rng = np.random.default_rng(k)
    spread = []
    for _ in range(200):
        theta = rng.normal(size=d)
        theta *= np.sqrt(theta_sq) / np.linalg.norm(theta)
        x = rng.normal(size=(n, d))
        bags = make_bags(n, k, rng)
        est = interpolating_linear_estimator(x, (x @ theta + rng.normal(size=n))[bags].mean(axis=1), bags, 1.0)
        spread.append(np.sum((est - theta / k) ** 2))
    terms = risk_terms(n, d, k, 1.0, snr=theta_sq)
    assert np.mean(spread) == pytest.approx(terms.noise + terms.design, rel=0.10)
    assert np.mean(spread) > 1.5 * terms.noise  # the noise part alone is far off
    assert terms.bias == pytest.approx((1 - 1 / k) ** 2 * theta_sq)


@pytest.mark.slow  # Monte Carlo, ~3 s (make test keeps the design term alone at four rho)
def test_interpolating_risk_with_a_nonzero_theta_matches_monte_carlo():
    n, d, k, rho = 6000, 50, 2, 0.5
    assert _monte_carlo(n, d, k, rho, theta_scale=1 / np.sqrt(d), reps=200, seed=21) == pytest.approx(
        predicted_risk(n, d, k, rho, snr=1.0), rel=0.05)


def test_laplace_part_uses_each_clients_own_clip_bound():
    """Ten clients of 200 bag and release their own responses (clip bound from their own n = 200); the pooled
    closed form on all their bags has the risk predicted with client_sizes, not with the pooled n = 2000."""
    rng = np.random.default_rng(5)
    clients, size, d, k, eps, noise_var = 10, 200, 10, 4, 1.0, 0.25
    risks = []
    for _ in range(200):
        xs, targets, bags = [], [], []
        for c in range(clients):
            x = rng.normal(size=(size, d))
            b = make_bags(size, k, rng)
            targets.append(release(rng.normal(scale=np.sqrt(noise_var), size=size), b, 0, eps, 1.0, rng))
            xs.append(x)
            bags.append(b + c * size)
        est = interpolating_linear_estimator(np.concatenate(xs), np.concatenate(targets), np.concatenate(bags), 0.0)
        risks.append(np.sum(est**2))  # theta = 0
    own = predicted_risk(clients * size, d, k, 0.0, eps, snr=0.0, noise_var=noise_var,
                         client_sizes=[size] * clients)
    pooled = predicted_risk(clients * size, d, k, 0.0, eps, snr=0.0, noise_var=noise_var)
    assert np.mean(risks) == pytest.approx(own, rel=0.10)
    assert pooled > 1.3 * own


def test_instance_level_shrinks_by_one_over_k():
    rng = np.random.default_rng(3)
    n, d, k = 20000, 5, 4
    theta = np.ones(d)
    x = rng.normal(size=(n, d))
    bags = make_bags(n, k, rng)
    est = interpolating_linear_estimator(x, (x @ theta)[bags].mean(axis=1), bags, 1.0)
    assert np.allclose(est, theta / k, atol=0.03)  # the bias the risk predictor uses
    exact = interpolating_linear_estimator(x, (x @ theta)[bags].mean(axis=1), bags, 0.0)
    assert np.allclose(exact, theta, atol=1e-8)  # bag level is unbiased (noise-free: exact)


def test_laplace_release_scale_and_clipping():
    rng = np.random.default_rng(4)
    n, k, eps = 200_000, 4, 0.5
    y = np.zeros(n)
    bags = make_bags(n, k, rng)
    noise = release(y, bags, 0, eps, clip=1.0, rng=rng)
    b = 2 * clip_bound(n, 1.0) / (k * eps)
    assert np.mean(np.abs(noise)) == pytest.approx(b, rel=0.02) and np.var(noise) == pytest.approx(2 * b * b, rel=0.03)
    big = np.full(n, 1e6)
    assert np.allclose(release(big, bags, 0, None, clip=1.0, rng=rng), clip_bound(n, 1.0))  # clipped, no noise
    labels = rng.integers(0, 3, n)
    props = release(labels, bags, 3, eps, clip=1.0, rng=rng) - bag_targets(labels, bags, 3)
    assert np.mean(np.abs(props)) == pytest.approx(2 / (k * eps), rel=0.02)


def test_bag_loss_definitions():
    torch.manual_seed(0)
    out = torch.randn(6, 3, 1)
    target = torch.randn(6)
    pred = out.squeeze(-1)
    bag = ((target - pred.mean(1)) ** 2).mean()
    inst = ((target[:, None] - pred) ** 2).mean()
    assert torch.isclose(bag_loss(out, target, 0.0, "regression"), bag)
    assert torch.isclose(bag_loss(out, target, 0.3, "regression"), 0.7 * bag + 0.3 * inst)
    assert torch.isclose(inst - bag, ((pred - pred.mean(1, keepdim=True)) ** 2).mean())  # L_inst = L_bag + R
    logits, labels = torch.randn(5, 1, 4), torch.tensor([0, 3, 1, 1, 2])
    soft = torch.nn.functional.one_hot(labels, 4).float()
    ce = torch.nn.functional.cross_entropy(logits.squeeze(1), labels)
    assert torch.isclose(bag_loss(logits, soft, 1.0, "classification"), ce)
    assert torch.isclose(bag_loss(logits, soft, 0.0, "classification"), ce)  # k = 1: bag = instance


def test_optimal_bag_size_tradeoff():
    best0, risks0 = optimal_bag_size(n=10000, d=20, epsilon=1.0, rho=0.0)
    best1, _ = optimal_bag_size(n=10000, d=20, epsilon=1.0, rho=1.0, snr=0.05)
    assert best0 == 1 and risks0[1] < risks0[5]  # at rho = 0 averaging noise-free labels does not pay
    assert best1 > 1  # at rho = 1 larger bags shrink the Laplace noise (until the bias takes over)


def test_bag_client_with_k1_rho1_is_plain_fedavg(tmp_path, small_scenario):

    import fedsim

    plain = small_scenario(run__rounds=3, client__momentum=0.9)
    bagged = plain.with_overrides({"bags.k": 1, "bags.rho": 1.0})
    a = fedsim.run(plain, out=tmp_path / "plain")
    b = fedsim.run(bagged, out=tmp_path / "bags")
    worst = max((a.state_dict[k] - b.state_dict[k]).abs().max().item() for k in a.state_dict)
    assert worst <= 1e-6, worst
    assert "label_privacy" not in b.summary  # no noise, no label-DP claim


def test_aggregate_scenarios_learn_and_record_label_privacy(tmp_path):
    import fedsim

    result = fedsim.run(fedsim.Scenario.load("aggregate-labels", ["run.rounds=5"]), out=tmp_path / "labels")
    assert result.final["accuracy"] > result.summary["initial"]["accuracy"]
    assert result.summary["label_privacy"]["epsilon"] == 2.0
    assert all(row["label_privacy"]["epsilon"] == 2.0 for row in result.metrics)  # released once: never grows


def test_bag_size_cli(cli):
    import json

    code, out, _ = cli("privacy", "bag-size", "--n", "10000", "--d", "20", "--epsilon", "1", "--rho", "1",
                       "--snr", "0.05", "--json")
    fields = json.loads(out)
    assert code == 0 and fields["best_k"] == optimal_bag_size(10000, 20, 1.0, 1.0, 0.05)[0] > 1
    code, out, _ = cli("privacy", "bag-size", "--n", "10000", "--d", "20")
    assert code == 0 and "best k: 1" in out
    code, _, err = cli("privacy", "bag-size", "--n", "100", "--d", "5", "--epsilon", "-1")
    assert code == 2 and "epsilon" in err


@pytest.mark.parametrize(("overrides", "message"), [
    ({"strategy.fraction_evaluate": 0.5}, r"strategy\.fraction_evaluate: > 0 evaluates on clients' true labels"),
    ({"strategy.name": "qfedavg"}, r"strategy\.name: 'qfedavg' weights clients by their loss on their true labels"),
])
def test_nothing_reads_true_labels_under_bags(overrides, message):
    """Aggregate responses release bag targets only: paths that read y (federated evaluation, q-FedAvg's received
    loss) are refused before anything runs."""
    from fedsim.errors import ScenarioError
    from fedsim.scenario import Scenario
    from fedsim.server import prepare

    for name in ("aggregate-labels", "aggregate-responses"):
        with pytest.raises(ScenarioError, match=message):
            prepare(Scenario.load(name, overrides))


@pytest.mark.parametrize(("rho", "k"), [(0.25, 8), (0.5, 4), (0.75, 3), (1.0, 4)])
def test_the_random_design_term_alone_matches_monte_carlo(rho, k):
    """Noise-free responses: the estimator's spread around its mean is the design term alone,
    (d + 1) |theta|^2 rho^2 m (N - m) N / M^4 (the earlier m (N - m) / M^3 form was 0.36-0.84x of it for rho < 1)."""
    n, d, reps = 2000, 10, 500
    rng = np.random.default_rng(int(rho * 100) + k)
    theta = rng.normal(size=d)
    theta /= np.linalg.norm(theta)  # |theta|^2 = 1
    estimates = []
    for _ in range(reps):
        x = rng.normal(size=(n, d))
        bags = make_bags(n, k, rng)
        estimates.append(interpolating_linear_estimator(x, (x @ theta)[bags].mean(axis=1), bags, rho))
    estimates = np.array(estimates)
    measured = np.mean(np.sum((estimates - estimates.mean(axis=0)) ** 2, axis=1))
    predicted = risk_terms(n, d, k, rho, snr=1.0).design
    assert measured == pytest.approx(predicted, rel=0.08)
    m, big_n = n // k, (n // k) * k
    big_m = m + rho * (big_n - m)
    old = (d + 1) * rho**2 * m * (big_n - m) / big_m**3
    assert rho == 1.0 or abs(old / measured - 1) > 0.1  # the test tells the two forms apart
