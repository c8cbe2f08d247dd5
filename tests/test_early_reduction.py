"""Early reduction (fedsim.reduction, fedsim.strategies.early): a vectorised cohort sends one partial result instead
of one model per client, and every strategy that allows it aggregates to what it gives on one reply per client,
within float rounding (weights 1e-5, metrics 1e-6 relative); the strategies that do not allow it are never reduced."""

from __future__ import annotations

import math

import pytest
import torch
from flwr.serverapp import strategy as flower

import fedsim
from fedsim import reduction
from fedsim.features.client_dp_adaptive import AdaptiveClippingDPFedAvg
from fedsim.protocol import LocalTraining
from fedsim.reduction import CLIPPED_SUM, MEAN, STACK, Reduction, reduce_stack
from fedsim.runtime.base import VirtualNodesGrid
from fedsim.stacked import schedule
from fedsim.strategies.dp_fedavg import PoissonDPFedAvg
from fedsim.strategies.early import reduction_for
from fedsim.strategies.fedld import FedLD
from fedsim.strategies.registry import STRATEGIES
from fedsim.training import minibatches

WEIGHTS_RTOL, METRICS_RTOL = 1e-5, 1e-6


@pytest.fixture
def partials_seen(monkeypatch):
    """How many partial results each round's push returned (one entry per send_and_reduce)."""
    seen: list[int] = []
    original = VirtualNodesGrid.send_and_reduce

    def spy(self, messages, reduction, *, timeout=None):
        replies, partials = original(self, messages, reduction, timeout=timeout)
        seen.append(len(partials))
        return replies, partials

    monkeypatch.setattr(VirtualNodesGrid, "send_and_reduce", spy)
    return seen


def both(scenario, tmp_path):
    """(the run with early reduction, the same run with one reply per client), both vectorised."""
    scenario = scenario.with_overrides({"run.vectorize": True})
    early = fedsim.run(scenario, out=tmp_path / "early")
    each = fedsim.run(scenario.with_overrides({"run.reduce_early": False}), out=tmp_path / "each")
    return early, each


def assert_same_within_rounding(a, b, examples: int = 360):
    for key, want in b.state_dict.items():
        got = a.state_dict[key].double()
        want = want.double()
        assert float((got - want).norm() / want.norm().clamp(min=1e-12)) <= WEIGHTS_RTOL, key
    assert len(a.metrics) == len(b.metrics)
    for got, want in zip(a.metrics, b.metrics):
        for section in ("train", "eval"):
            assert set(got.get(section, {})) == set(want.get(section, {}))
            for key, value in want.get(section, {}).items():
                if "accuracy" in key:  # counted: a near-tie may flip one example
                    assert abs(got[section][key] - value) <= 1.0 / examples + 1e-9, (section, key)
                else:
                    assert math.isclose(got[section][key], value, rel_tol=METRICS_RTOL, abs_tol=1e-12), (section, key)
        for key in ("replies", "failures", "skipped", "faults"):
            assert got.get(key) == want.get(key), key


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedld"])
def test_every_listed_strategy_aggregates_partials_as_it_aggregates_replies(name, small_scenario, tmp_path,
                                                                          partials_seen):
    early, each = both(small_scenario(strategy__name=name, strategy__fraction_train=0.8), tmp_path)
    assert partials_seen[:3] == [1, 1, 1]  # the reduced run: one partial a round (inline: one cohort)
    assert early.summary["runtime"]["vectorized_clients"] == each.summary["runtime"]["vectorized_clients"] == 12
    assert_same_within_rounding(early, each)
    # one cohort a round: the partial is computed with Flower's own arithmetic (weighted means) or holds the very
    # states the replies would (FedLD's stack), so the weights are the same bits
    assert all(torch.equal(early.state_dict[k], v) for k, v in each.state_dict.items())


@pytest.mark.parametrize("name", ["client-dp", "client-dp-adaptive"])
def test_client_level_dp_clips_where_the_cohort_trained(name, tmp_path, partials_seen):
    scenario = fedsim.Scenario.load("client-dp").with_overrides({"run.rounds": 3})
    if name == "client-dp-adaptive":
        scenario = scenario.with_overrides({"privacy.mode": "client-dp-adaptive"})
    early, each = both(scenario, tmp_path)
    assert partials_seen[:3] == [1, 1, 1]
    assert_same_within_rounding(early, each)
    assert early.metrics[-1]["privacy"] == each.metrics[-1]["privacy"]  # the same mechanism, the same ledger
    if "adaptive" in name:
        assert math.isclose(early.metrics[-1]["train"]["next-clipping-norm"],
                            each.metrics[-1]["train"]["next-clipping-norm"], rel_tol=1e-9)


def test_dp_sgd_cohorts_reduce_with_every_client_accounted(tmp_path, partials_seen):
    early, each = both(fedsim.Scenario.load("dp-sgd").with_overrides({"run.rounds": 2}), tmp_path)
    assert partials_seen == [1, 1]
    assert_same_within_rounding(early, each)
    assert early.metrics[-1]["privacy"] == each.metrics[-1]["privacy"]  # per-client accountants saw every client


def test_faults_and_one_by_one_stragglers_mix_with_the_cohorts_partial(small_scenario, tmp_path, partials_seen):
    """Dropped and failed clients are left out; real-clock stragglers run one by one, so their replies carry their
    own arrays beside the cohort's partial."""
    for name in ("fedavg", "fedld"):
        scenario = small_scenario(strategy__name=name, run__rounds=4, data__partitioner__num_partitions=8,
                                  faults__dropout_rate=0.2, faults__failure_rate=0.1, faults__straggler_rate=0.3,
                                  faults__straggler_delay_s=0.001, faults__straggler_clock="real")
        early, each = both(scenario, tmp_path / name)
        assert sum(r["faults"]["straggled"] for r in early.metrics) > 0 and sum(r["failures"] for r in early.metrics)
        assert each.summary["runtime"]["vectorized_clients"] < 32  # stragglers ran on their own
        assert_same_within_rounding(early, each)
    assert all(n == 1 for n in partials_seen)


def test_unlearning_stores_every_update_from_the_stack(tmp_path, partials_seen):
    scenario = fedsim.Scenario.load("unlearn-client").with_overrides(
        {"run.rounds": 4, "unlearning.requests.0.at_round": 2})
    early, each = both(scenario, tmp_path)
    assert partials_seen and all(n == 1 for n in partials_seen)
    assert_same_within_rounding(early, each)
    assert early.summary["history"] == each.summary["history"]
    stored = sorted((tmp_path / "each" / "history").rglob("*"))
    assert [p.relative_to(tmp_path / "each") for p in stored] == \
        [p.relative_to(tmp_path / "early") for p in sorted((tmp_path / "early" / "history").rglob("*"))]
    for got, want in zip(early.summary["unlearning"], each.summary["unlearning"]):
        assert got["method"] == want["method"]
        for key, value in want.items():
            if isinstance(value, float) and key not in ("time_s", "speedup"):
                assert abs(got[key] - value) <= 1e-4 + 1e-4 * abs(value), key


def test_strategies_are_reduced_early_only_by_exact_class():
    kwargs = {"fraction_train": 1.0, "min_available_nodes": 1}

    class OwnFedAvg(flower.FedAvg):  # a user's aggregation: never reduced behind its back
        pass

    class OwnFedLD(FedLD):
        pass

    for name in ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"):
        assert reduction_for(STRATEGIES[name](**kwargs), 1) == Reduction(MEAN, "num-examples"), name
    for name in ("fedmedian", "fedtrimmedavg", "krum", "qfedavg", "fedbn"):
        extra = {"client_learning_rate": 0.1} if name == "qfedavg" else {}
        assert reduction_for(STRATEGIES[name](**kwargs, **extra), 1) is None, name
    assert reduction_for(OwnFedAvg(**kwargs), 1) is None and reduction_for(OwnFedLD(**kwargs), 1) is None
    assert reduction_for(FedLD(**kwargs), 1).kind == STACK
    dp = PoissonDPFedAvg(noise_multiplier=1.0, clipping_norm=0.7, sample_rate=0.5)
    assert reduction_for(dp, 1) == Reduction(CLIPPED_SUM, "num-examples", 0.7)
    adaptive = AdaptiveClippingDPFedAvg(noise_multiplier=1.0, clipping_norm=0.3, sample_rate=0.5,
                                        clipped_count_stddev=1.0, target_quantile=0.5, clip_learning_rate=0.2)
    assert reduction_for(adaptive, 1) == Reduction(CLIPPED_SUM, "num-examples", 0.3)


def test_partials_equal_their_definitions(monkeypatch):
    """MEAN is the weighted mean, CLIPPED_SUM the sum of min(1, C / |u_i|) u_i in float64, STACK the states."""
    torch.manual_seed(0)
    start = {"w": torch.randn(3, 4), "b": torch.randn(4)}
    states = {k: v + torch.randn(5, *v.shape) * torch.tensor([0.01, 0.1, 1, 3, 0]).view(-1, *[1] * v.dim())
              for k, v in start.items()}
    weights = [3.0, 1.0, 5.0, 2.0, 4.0]
    mean = reduce_stack(Reduction(MEAN), list(range(5)), weights, [states])
    for k, s in states.items():
        want = sum(w * s[i].double() for i, w in enumerate(weights)) / sum(weights)
        torch.testing.assert_close(mean.arrays[k].double(), want, rtol=1e-6, atol=1e-7)
    clipped = reduce_stack(Reduction(CLIPPED_SUM, clipping_norm=1.0), list(range(5)), weights, [states], start)
    for i in range(5):
        norm = math.sqrt(sum(float((states[k][i].double() - start[k].double()).pow(2).sum()) for k in start))
        assert math.isclose(clipped.norms[i], norm, rel_tol=1e-12, abs_tol=1e-300)
    for k, origin in start.items():
        want = sum((min(1.0, 1.0 / n) if n else 1.0) * (states[k][i].double() - origin.double())
                   for i, n in enumerate(clipped.norms))
        torch.testing.assert_close(clipped.arrays[k], want, rtol=1e-12, atol=1e-12)
    stack = reduce_stack(Reduction(STACK), list(range(5)), weights, [states])
    assert all(stack.arrays[k] is states[k] for k in states)
    # a cohort trained in chunks (memory) reduces them without joining: the same mean bit for bit, the same stack
    chunks = [{k: v[:2] for k, v in states.items()}, {k: v[2:] for k, v in states.items()}]
    for kind, extra in ((MEAN, {}), (STACK, {}), (CLIPPED_SUM, {"clipping_norm": 1.0})):
        whole = reduce_stack(Reduction(kind, **extra), list(range(5)), weights, [states], start)
        split = reduce_stack(Reduction(kind, **extra), list(range(5)), weights, chunks, start)
        for k in states:
            if kind == CLIPPED_SUM:
                torch.testing.assert_close(split.arrays[k], whole.arrays[k], rtol=1e-12, atol=1e-12)
            else:
                assert torch.equal(split.arrays[k], whole.arrays[k]), (kind, k)
    # in another node order too, chunks or not
    shuffled = [4, 0, 3, 1, 2]
    whole = reduce_stack(Reduction(MEAN), shuffled, weights, [states])
    assert all(torch.equal(reduce_stack(Reduction(MEAN), shuffled, weights, chunks).arrays[k], whole.arrays[k])
               for k in states)
    # a large state is averaged entry by entry instead of as one flat vector: the same bits
    monkeypatch.setattr(reduction, "FLAT_MEAN_ELEMENTS", 0)
    assert all(torch.equal(reduce_stack(Reduction(MEAN), shuffled, weights, chunks).arrays[k], whole.arrays[k])
               for k in states)
    by_entry = reduce_stack(Reduction(MEAN), list(range(5)), weights, chunks)
    assert all(torch.equal(by_entry.arrays[k], mean.arrays[k]) for k in states)


def test_schedule_draws_the_batches_minibatches_draws():
    cfg = LocalTraining(batch_size=4, local_epochs=3)
    sizes = [0, 1, 4, 9, 13]
    plan = schedule(sizes, cfg, [torch.Generator().manual_seed(7 + i) for i in range(len(sizes))])
    offsets = [0, *torch.tensor(sizes).cumsum(0).tolist()[:-1]]
    for c, n in enumerate(sizes):
        want = list(minibatches(n, 4, 3, torch.Generator().manual_seed(7 + c)))
        got = [plan.rows[t, c][plan.mask[t, c].bool()] - offsets[c] for t in range(len(want))]
        assert all(torch.equal(g, w) for g, w in zip(got, want)), n
        assert int((plan.counts[:, c] > 0).sum()) == len(want)


def test_a_strategy_of_ones_own_takes_part_by_declaring_it(small_scenario, tmp_path, partials_seen):
    """docs/extending.md's example: a FedAvg subclass that defines reduction and aggregate_partials is reduced early
    and aggregates as FedAvg does."""
    from fedsim.reduction import group_message, split_replies

    class MyFedAvg(flower.FedAvg):
        def reduction(self, server_round):
            return Reduction(MEAN, self.weighted_by_key)

        def aggregate_partials(self, server_round, replies, partials):
            _, own = split_replies(replies, partials, self.weighted_by_key)
            groups = [group_message(p, self.arrayrecord_key, self.weighted_by_key) for p in partials]
            return self.aggregate_train(server_round, groups + own)

    scenario = small_scenario(run__vectorize=True)
    kwargs = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_available_nodes": 1}
    own = fedsim.run(scenario, strategy=MyFedAvg(**kwargs), out=tmp_path / "own")
    assert partials_seen == [1, 1, 1]
    plain = fedsim.run(scenario.with_overrides({"run.reduce_early": False}), strategy=flower.FedAvg(**kwargs),
                       out=tmp_path / "plain")
    assert_same_within_rounding(own, plain)
