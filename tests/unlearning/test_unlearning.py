"""Machine unlearning: what is forgotten stays forgotten, the methods against their definitions, the metrics."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg
from torch import nn

import fedsim
from fedsim.arrays import record_to_state, state_to_record
from fedsim.clients import app as client_module
from fedsim.clients import train_together as handler
from fedsim.errors import ScenarioError
from fedsim.evaluation import task_loss
from fedsim.models import initial_model
from fedsim.protocol import LocalTraining
from fedsim.runner import make_grid, run_on_grid
from fedsim.runtime import InlineGrid
from fedsim.runtime.base import node_id_of
from fedsim.scenario import Scenario, UnlearningRequest
from fedsim.server import prepare
from fedsim.strategies.unlearning import Unlearning
from fedsim.strategies.unlearning_session import RequestSession
from fedsim.unlearning.forget import Forgotten
from fedsim.unlearning.history import HistoryStore
from fedsim.unlearning.methods import methods
from fedsim.unlearning.methods.federaser import calibrate
from fedsim.unlearning.methods.gradient_ascent import gradient_ascent, project_to_ball
from fedsim.unlearning.methods.random_label import random_labels, relabel_and_train
from fedsim.unlearning.methods.salun import apply_mask, saliency_mask
from fedsim.unlearning.metrics import mia_efficacy

AT = 3


def unlearn_scenario(small_scenario, requests: list[dict], unlearning: dict | None = None, **overrides) -> Scenario:
    """The small test scenario (5 digits clients) for 5 rounds, with unlearning requests."""
    raw = small_scenario(run__rounds=5, **overrides).to_dict()
    raw["unlearning"] = {"requests": requests, "rounds": 1, **(unlearning or {})}
    return Scenario.from_dict(raw)


class SpyGrid(InlineGrid):
    """An InlineGrid that records (phase, message type, node, server round, config) of every message."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[dict] = []
        self.replies: list = []
        self.phase = "training"

    def _execute(self, messages, timeout, reduction):
        for m in messages:
            config = m.content.config_records.get("config", ConfigRecord())
            self.log.append({"phase": self.phase, "type": m.metadata.message_type, "node": m.metadata.dst_node_id,
                             "round": config.get("server-round"), "config": dict(config), "content": m.content,
                             "id": m.metadata.message_id})
        replies = super()._execute(messages, timeout, reduction)
        self.replies.extend(replies.values())
        return replies


def run_spied(scenario: Scenario, tmp_path, monkeypatch):
    """Run `scenario` inline, marking messages sent while requests are served and while retrain runs."""
    prepared = prepare(scenario, run_dir=tmp_path / "run")
    from fedsim.clients.app import app as client_app
    from fedsim.clients.workspace import ClientSpec

    grid = SpyGrid(client_app, scenario.data.partitioner.num_partitions, ClientSpec.of(scenario).run_config(),
                   seed=scenario.run.seed, faults=scenario.faults)
    serve, retrain = Unlearning._serve, RequestSession.retrain

    def serving(self, *args):
        grid.phase = "serving"
        try:
            return serve(self, *args)
        finally:
            grid.phase = "after"

    def retraining(self, *args):
        before, grid.phase = grid.phase, "retrain"
        try:
            return retrain(self, *args)
        finally:
            grid.phase = before

    monkeypatch.setattr(Unlearning, "_serve", serving)
    monkeypatch.setattr(RequestSession, "retrain", retraining)
    result = run_on_grid(prepared, grid, tmp_path / "run")
    return result, grid, prepared.strategy


# ---- what is forgotten ---------------------------------------------------------------------------------------
def test_forgotten_marks_clients_classes_and_samples_and_travels_in_a_config_record():
    y = torch.tensor([0, 1, 2, 1, 0])
    spec = Forgotten.of("class", 1) | Forgotten.of("samples", 4, [0, 4]) | Forgotten.of("client", 2)
    assert spec.kept(0, y).tolist() == [True, False, True, False, True]
    assert spec.kept(4, y).tolist() == [False, False, True, False, False]
    assert not spec.kept(2, y).any()
    config = ConfigRecord()
    spec.write(config, "forget")
    assert Forgotten.read(config, "forget") == spec
    assert not Forgotten() and Forgotten.read(ConfigRecord(), "forget") == Forgotten()


@pytest.mark.parametrize("strategy", ["fedavg", "fedld"])
def test_a_forgotten_client_is_never_sampled_again_nor_seen_by_retrain(strategy, tmp_path, monkeypatch, small_scenario):
    scenario = unlearn_scenario(small_scenario, [{"at_round": AT, "kind": "client", "target": 2,
                                  "method": ["retrain", "finetune", "salun", "federaser", "pga"]}],
                                strategy__name=strategy, strategy__fraction_evaluate=1.0)
    result, grid, _ = run_spied(scenario, tmp_path, monkeypatch)
    gone = node_id_of(2)
    later = [e for e in grid.log if e["phase"] == "after"]
    assert later and all(e["node"] != gone for e in later)
    assert {e["type"] for e in later} == {"train", "evaluate"}
    retrain = [e for e in grid.log if e["phase"] == "retrain"]
    assert len({e["round"] for e in retrain}) == AT and all(e["node"] != gone for e in retrain)
    assert len(retrain) == AT * 4  # computed once, for the retrain row and every method's gap
    assert all(e["config"]["forget-clients"] == [2] for e in retrain + later)
    assert any(e["node"] == gone for e in grid.log if e["phase"] == "training")
    assert [r["method"] for r in result.summary["unlearning"]] == ["retrain", "finetune", "salun", "federaser", "pga"]


def test_forgotten_classes_and_samples_are_dropped_from_partitions(tmp_path, monkeypatch, small_scenario):
    scenario = unlearn_scenario(small_scenario, [{"at_round": 2, "kind": "class", "target": 7, "method": ["retrain",
                                                                                                          "finetune"]},
                                 {"at_round": AT, "kind": "samples", "target": 1, "samples": [0, 5, 9],
                                  "method": "finetune"}])
    seen, original = [], client_module.partition_of

    def spy(context, ws, config=None):
        pid, x, y = original(context, ws, config)
        seen.append((phase[0], pid, y.clone(), len(ws.partition(pid)[1])))
        return pid, x, y

    phase = ["training"]
    serve = Unlearning._serve

    def serving(self, request, *args):
        phase[0] = f"request at {request.at_round}"
        return serve(self, request, *args)

    monkeypatch.setattr(client_module, "partition_of", spy)
    monkeypatch.setattr(handler, "partition_of", spy)  # the vectorised path's copy of the name
    monkeypatch.setattr(Unlearning, "_serve", serving)
    fedsim.run(scenario, out=tmp_path / "run")
    assert any((y == 7).any() for p, _, y, _ in seen if p == "training")
    assert not any((y == 7).any() for p, _, y, _ in seen if p != "training")
    client_1 = [(y, full) for p, pid, y, full in seen if p == f"request at {AT}" and pid == 1]
    full_y = fedsim.data.federated_data(scenario.data, scenario.run.seed).partition(1)[1]
    expected = int((full_y != 7).sum()) - sum(int(full_y[i] != 7) for i in (0, 5, 9))
    assert client_1 and all(len(y) == expected for y, _ in client_1)


def test_a_random_request_forgets_a_seeded_share_of_every_client(tmp_path, monkeypatch, small_scenario):
    """kind 'random' (SalUn's random forgetting, federated): round(f n_i) of every client's n_i examples, drawn
    without replacement and seeded, dropped from every partition from the request on (retrain included)."""
    sizes = [50, 30, 7, 3]
    once, again = Forgotten.random(0.1, sizes, 1, 3), Forgotten.random(0.1, sizes, 1, 3)
    assert once == again and once != Forgotten.random(0.1, sizes, 2, 3)
    assert {pid: len(idx) for pid, idx in once.samples.items()} == {0: 5, 1: 3, 2: 1}  # round(0.3) = 0: none
    assert all(0 <= i < sizes[pid] for pid, idx in once.samples.items() for i in idx)
    scenario = unlearn_scenario(small_scenario, [{"at_round": AT, "kind": "random", "fraction": 0.1,
                                                  "method": ["retrain", "finetune", "salun"]}])
    data = fedsim.data.federated_data(scenario.data, scenario.run.seed)
    full = [len(data.partition(i)[1]) for i in range(5)]
    expected = Forgotten.random(0.1, full, scenario.run.seed, AT)
    seen, original, phase = [], client_module.partition_of, ["training"]

    def spy(context, ws, config=None):
        pid, x, y = original(context, ws, config)
        seen.append((phase[0], pid, len(y)))
        return pid, x, y

    serve = Unlearning._serve

    def serving(self, request, *args):
        phase[0] = "request"
        return serve(self, request, *args)

    monkeypatch.setattr(client_module, "partition_of", spy)
    monkeypatch.setattr(handler, "partition_of", spy)
    monkeypatch.setattr(Unlearning, "_serve", serving)
    result = fedsim.run(scenario, out=tmp_path / "run")
    rows = result.summary["unlearning"]
    assert [r["method"] for r in rows] == ["retrain", "finetune", "salun"]
    assert rows[0]["request"] == {"at_round": AT, "kind": "random", "target": 0.1,
                                  "samples": sum(round(0.1 * n) for n in full)}
    after = {(pid, n) for p, pid, n in seen if p == "request"}
    assert after and all(n == full[pid] - len(expected.samples.get(pid, ())) for pid, n in after)


@pytest.mark.parametrize(("request_", "message"), [
    ({"kind": "random", "target": 1, "fraction": 0.1}, "takes no target"),
    ({"kind": "random"}, "fraction is the share"),
    ({"kind": "client", "target": 1, "fraction": 0.1}, "fraction is the share"),
])
def test_random_requests_are_checked(request_, message):
    with pytest.raises(ValueError, match=message):
        UnlearningRequest(at_round=2, method="retrain", **request_)


# ---- the history store ---------------------------------------------------------------------------------------
def test_history_store_keeps_rounds_and_deletes_a_forgotten_clients_updates(tmp_path, small_scenario):
    scenario = unlearn_scenario(small_scenario, [{"at_round": AT, "kind": "client", "target": 3, "method": "finetune"}],
                                {"history_interval": 2})
    result = fedsim.run(scenario, out=tmp_path / "run")
    store = HistoryStore(tmp_path / "run" / "history", 2)
    assert store.rounds() == [1, 3, 5]
    assert {p.name for p in store.dir.glob("round-*/client-*.pt")} == {f"client-{c}.pt" for c in (0, 1, 2, 4)}
    assert set(store.updates(1)) == {0, 1, 2, 4}  # client 3 took part in round 1; its update is gone
    assert result.summary["history"] == {"interval": 2, "rounds": 3, "bytes": store.size_bytes()}
    assert store.size_bytes() > 0


def test_history_store_update_is_client_model_minus_global(tmp_path):
    store = HistoryStore(tmp_path, 1)
    sent = {"w": torch.ones(3)}
    store.save(1, sent, {4: ({"w": torch.tensor([0.5, 0.0, -1.0])}, 12)})
    update, n = store.updates(1)[4]
    assert torch.equal(update["w"], torch.tensor([0.5, 0.0, -1.0])) and n == 12
    store.save(2, {"w": torch.zeros(3)}, {})
    assert store.forget_client(4, served_after=2) == 2 and store.updates(1) == {}  # its update and round 2's model
    assert store.rounds() == [1] and store.has_global(1) and not store.has_global(2)


def test_a_damaged_history_file_is_a_clear_error(tmp_path):
    store = HistoryStore(tmp_path, 1)
    store.save(1, {"w": torch.ones(2)}, {})
    (tmp_path / "round-00001" / "global.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(fedsim.errors.RunDirError, match="global.pt"):
        store.global_model(1)


# ---- the methods against their definitions -----------------------------------------------------------------
def test_saliency_mask_takes_the_top_fraction_of_absolute_gradients_over_all_parameters():
    g = {"a": torch.tensor([[0.1, -5.0], [0.3, 0.2]]), "b": torch.tensor([-0.4, 2.0, 0.0])}
    mask = saliency_mask(g, 3 / 7)
    assert mask["a"].tolist() == [[False, True], [False, False]] and mask["b"].tolist() == [True, True, False]
    flat = torch.cat([v.abs().flatten() for v in g.values()])
    assert int(sum(m.sum() for m in mask.values())) == math.ceil(3 / 7 * len(flat))


def test_apply_mask_keeps_unmasked_entries_bit_identical():
    start = {"w": torch.randn(4), "n": torch.tensor(3)}
    moved = {"w": start["w"] + 1, "n": torch.tensor(9)}
    out = apply_mask(moved, start, {"w": torch.tensor([True, False, True, False])})
    assert torch.equal(out["w"][1::2], start["w"][1::2]) and torch.equal(out["w"][::2], moved["w"][::2])
    assert int(out["n"]) == 3


def test_salun_client_step_never_moves_unmasked_weights_or_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    mask = {name: torch.rand(p.shape) < 0.5 for name, p in model.named_parameters()}
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    cfg = LocalTraining(local_epochs=3, batch_size=8, lr=0.05, momentum=0.9, weight_decay=5e-4)
    relabel_and_train(model, (x[:30], y[:30], x[30:], y[30:]), 3, cfg, torch.Generator().manual_seed(1), mask)
    after = model.state_dict()
    for name in mask:
        assert torch.equal(after[name][~mask[name]], start[name][~mask[name]])
        assert not torch.equal(after[name][mask[name]], start[name][mask[name]])
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(after[key], start[key])


def test_salun_end_to_end_unmasked_global_weights_are_bit_identical(tmp_path, monkeypatch, small_scenario):
    masks, outcomes = [], []
    original_mask, salun = saliency_mask, methods()["salun"]

    def record_mask(gradients, fraction):
        masks.append(original_mask(gradients, fraction))
        return masks[-1]

    def record_salun(session, job, strategy):
        result = salun.serve(session, job, strategy)
        outcomes.append((record_to_state(job.arrays), result.arrays.to_torch_state_dict()))
        return result

    monkeypatch.setattr("fedsim.unlearning.methods.salun.saliency_mask", record_mask)
    monkeypatch.setitem(methods(), "salun", dataclasses.replace(salun, serve=record_salun))
    scenario = unlearn_scenario(small_scenario, [{"at_round": AT, "kind": "class", "target": 1, "method": "salun"}],
                                {"rounds": 2}, client__momentum=0.9, client__weight_decay=5e-4)
    fedsim.run(scenario, out=tmp_path / "run")
    (before, after), mask = outcomes[0], masks[0]
    assert 0.45 < sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values()) < 0.55
    for key, m in mask.items():
        assert torch.equal(after[key][~m], before[key][~m])
        assert not torch.equal(after[key][m], before[key][m])


def test_calibrate_takes_new_direction_and_old_norm_per_layer():
    new = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0, 0.0])}
    old = {"a": torch.tensor([0.0, 10.0]), "b": torch.tensor([1.0, 1.0])}
    out = calibrate(new, old)
    assert torch.allclose(out["a"], torch.tensor([6.0, 8.0]))
    assert torch.equal(out["b"], old["b"])  # no new direction: the old update stands


def test_projection_onto_the_ball_around_the_start():
    model = nn.Linear(3, 1)
    center = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.full_like(p, 2.0))
    project_to_ball(model, center, 0.5)
    dist = torch.sqrt(sum((p - c).pow(2).sum() for p, c in zip(model.parameters(), center, strict=True)))
    assert dist.item() == pytest.approx(0.5, rel=1e-5)
    assert all(torch.allclose(p - c, torch.full_like(p, 0.25)) for p, c in zip(model.parameters(), center,
                                                                                    strict=True))


def test_gradient_ascent_raises_the_loss_on_forgotten_data_and_pga_stays_in_its_ball():
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    cfg = LocalTraining(local_epochs=3, batch_size=16, lr=0.5)
    model = nn.Linear(5, 3)
    before = task_loss("classification", model(x), y).item()
    gradient_ascent(model, x, y, cfg, "classification", torch.Generator().manual_seed(0))
    assert task_loss("classification", model(x), y).item() > before + 0.1
    model = nn.Linear(5, 3)
    center = [p.detach().clone() for p in model.parameters()]
    gradient_ascent(model, x, y, cfg, "classification", torch.Generator().manual_seed(0), clip=5.0, radius=0.1)
    assert torch.sqrt(sum((p - c).pow(2).sum() for p, c in zip(model.parameters(), center, strict=True))) <= 0.1001


def test_pga_early_stop_ends_the_ascent_once_far_from_the_clients_own_model():
    """The authors' early stop: after every projected step, stop once ||w - w_own|| > d. Checked against a
    hand-written momentum ascent with the same batches, projection and stop rule."""
    torch.manual_seed(1)
    x, y = torch.randn(48, 5), torch.randint(0, 3, (48,))
    cfg = LocalTraining(local_epochs=4, batch_size=8, lr=0.05, momentum=0.9)
    start = nn.Linear(5, 3)
    own = [q.detach() + 0.05 * torch.randn_like(q) for q in start.parameters()]
    center = [q.detach().clone() for q in start.parameters()]
    model = nn.Linear(5, 3)
    model.load_state_dict(start.state_dict())
    metrics = gradient_ascent(model, x, y, cfg, "classification", torch.Generator().manual_seed(3), clip=5.0,
                              radius=1.0, stop_at=(own, 0.6))

    ref = nn.Linear(5, 3)
    ref.load_state_dict(start.state_dict())
    optimizer = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    generator, steps = torch.Generator().manual_seed(3), 0
    order = [torch.randperm(48, generator=generator) for _ in range(4)]
    batches = [o[i:i + 8] for o in order for i in range(0, 48, 8)]
    for idx in batches:
        dist = torch.sqrt(sum((q - o).pow(2).sum() for q, o in zip(ref.parameters(), own)))
        if dist > 0.6:
            break
        optimizer.zero_grad()
        (-task_loss("classification", ref(x[idx]), y[idx])).backward()
        nn.utils.clip_grad_norm_(ref.parameters(), 5.0)
        optimizer.step()
        project_to_ball(ref, center, 1.0)
        steps += 1
    assert 0 < steps < len(batches)  # the stop fired, and not before the first step
    assert metrics["steps"] == steps
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_pga_sends_its_early_stop_only_when_set(tmp_path, monkeypatch, small_scenario):
    seen = []
    original = RequestSession.client_step

    def spy(self, job, method, step, arrays, local, nodes=None, extra=None, records=None):
        if method == "pga":
            seen.append((dict(extra), dict(records or {})))
        return original(self, job, method, step, arrays, local, nodes, extra, records)

    monkeypatch.setattr(RequestSession, "client_step", spy)
    request = [{"at_round": AT, "kind": "client", "target": 2, "method": "pga"}]
    fedsim.run(unlearn_scenario(small_scenario, request), out=tmp_path / "off")
    stop = {"per_method": {"pga": {"stop_distance": 0.5}}}
    fedsim.run(unlearn_scenario(small_scenario, request, stop), out=tmp_path / "on")
    (off_extra, off_records), (on_extra, on_records) = seen
    assert "stop-distance" not in off_extra and not off_records
    assert on_extra["stop-distance"] == 0.5 and set(on_records) == {"target-model"}


def test_random_labels_are_never_the_true_label():
    y = torch.randint(0, 4, (1000,))
    r = random_labels(y, 4, torch.Generator().manual_seed(0))
    assert not (r == y).any() and set(r.tolist()) == {0, 1, 2, 3}


def test_retrain_is_the_same_run_without_the_forgotten_client(tmp_path, small_scenario):
    """retrain == a plain FedAvg run whose grid never offers the client, from the same initial model and seeds."""
    scenario = unlearn_scenario(small_scenario, [{"at_round": AT, "kind": "client", "target": 4, "method": "retrain"}])
    prepared = prepare(scenario, run_dir=tmp_path / "run")
    grid = make_grid(prepared)
    run_on_grid(prepared, grid, tmp_path / "run")
    retrained = record_to_state(next(iter(prepared.strategy.session._retrained.values()))[0])

    plain = prepare(small_scenario(run__rounds=AT))
    plain_grid = make_grid(plain)
    plain_grid.retire(node_id_of(4))
    result = run_on_grid(plain, plain_grid, tmp_path / "plain")
    for key, value in result.state_dict.items():
        assert torch.allclose(value, retrained[key], atol=1e-6)


# ---- metrics -------------------------------------------------------------------------------------------------
def test_mia_efficacy_reads_members_and_non_members_apart():
    rng = np.random.default_rng(0)
    members, non_members = rng.uniform(0.9, 1.0, 300), rng.uniform(0.0, 0.6, 300)
    assert mia_efficacy(members, non_members, rng.uniform(0.0, 0.6, 100)) > 95
    assert mia_efficacy(members, non_members, rng.uniform(0.9, 1.0, 100)) < 5


def test_retrain_mia_on_the_forgotten_client_is_close_to_its_mia_on_test_data(tmp_path):
    """A model that fits its training data (train accuracy ~99%, test ~96%): for retrain, the forgotten client's
    data must look like unseen data to the attack, judged on held-out test examples."""
    scenario = Scenario.load("unlearn-client", {
        "unlearning.requests": [{"at_round": 10, "kind": "client", "target": 2, "method": "retrain"}],
        "data.partitioner.name": "iid", "data.partitioner.num_partitions": 5, "data.test_fraction": 0.5,
        "run.rounds": 11, "model.hidden": [256], "client.local_epochs": 5})
    prepared = prepare(scenario, run_dir=tmp_path / "run")
    grid = make_grid(prepared)
    run_on_grid(prepared, grid, tmp_path / "run")
    arrays = next(iter(prepared.strategy.session._retrained.values()))[0]
    evaluator = prepared.strategy.evaluate
    parts = evaluator.split(Forgotten.of("client", 2), Forgotten.of("client", 2))
    evaluator.model.load_state_dict(record_to_state(arrays))
    conf = {}
    for name, (x, y) in parts.items():
        with torch.no_grad():
            conf[name] = torch.softmax(evaluator.model(x), 1).gather(1, y.view(-1, 1)).squeeze(1).numpy()
    half = len(conf["test"]) // 2
    on_forgotten = mia_efficacy(conf["retained"], conf["test"][:half], conf["forgotten"])
    on_test = mia_efficacy(conf["retained"], conf["test"][:half], conf["test"][half:])
    on_members = mia_efficacy(conf["retained"], conf["test"][:half], conf["retained"])
    assert abs(on_forgotten - on_test) < 3, (on_forgotten, on_test)
    assert on_members < on_test


def test_summary_has_one_row_per_method_and_training_continues_from_the_first(tmp_path, monkeypatch, small_scenario):
    scenario = unlearn_scenario(small_scenario, [{"at_round": AT, "kind": "client", "target": 0,
                                  "method": ["gradient-ascent", "retrain", "random-label"]}])
    result, grid, _strategy = run_spied(scenario, tmp_path, monkeypatch)
    rows = result.summary["unlearning"]
    assert [r["method"] for r in rows] == ["gradient-ascent", "retrain", "random-label"]
    for row in rows:
        assert {"request", "ua", "ra", "ta", "mia", "avg_gap", "time_s", "rounds", "speedup"} <= set(row)
        assert all(0 <= row[k] <= 100 for k in ("ua", "ra", "ta", "mia"))
    retrain = next(r for r in rows if r["method"] == "retrain")
    assert retrain["avg_gap"] == 0 and retrain["rounds"] == AT
    assert rows[0]["request"] == {"at_round": AT, "kind": "client", "target": 0}
    next_round = [e for e in grid.log if e["phase"] == "after" and e["type"] == "train"]
    ascended = [e for e in grid.log if e["phase"] == "serving" and e["config"].get("method") == "gradient-ascent"]
    assert [e["node"] for e in ascended] == [node_id_of(0)] and next_round[0]["round"] == AT + 1
    reply = next(m for m in grid.replies if m.metadata.reply_to_message_id == ascended[0]["id"])
    sent = next_round[0]["content"]["arrays"].to_torch_state_dict()
    before = ascended[0]["content"]["arrays"].to_torch_state_dict()
    for key, value in reply.content["arrays"].to_torch_state_dict().items():
        assert torch.equal(sent[key], value) and not torch.equal(value, before[key])


def test_regression_methods_report_l1_mia_and_anamnesis_index(tmp_path):
    scenario = Scenario.load("unlearn-regression", ["run.rounds=6", "unlearning.requests.0.at_round=4"])
    result = fedsim.run(scenario, out=tmp_path / "run")
    rows = {r["method"]: r for r in result.summary["unlearning"]}
    assert set(rows) == {"retrain", "blindspot", "gaussian", "finetune"}
    for row in rows.values():
        assert {"forgotten_l1", "retained_l1", "test_l1", "mia", "relearn_steps", "ain", "avg_gap"} <= set(row)
    assert rows["retrain"]["avg_gap"] == 0


def test_programmatic_request_on_a_plain_flower_strategy(small_scenario):
    scenario = small_scenario(run__rounds=4)
    prepared = prepare(scenario)
    from fedsim.clients.app import app as client_app
    from fedsim.clients.workspace import ClientSpec

    grid = SpyGrid(client_app, 5, ClientSpec.of(scenario).run_config())
    strategy = Unlearning(FedAvg(fraction_evaluate=0.0, min_available_nodes=2))
    strategy.request_unlearning("client", 1, "finetune", at_round=2)
    model = initial_model(scenario.model, prepared.data.info, 0)
    initial = state_to_record(model.state_dict())
    result = strategy.start(grid, initial, num_rounds=4)
    assert not np.array_equal(result.arrays["0.weight"].numpy(), initial["0.weight"].numpy())  # it trained
    rounds_with_client_1 = {e["round"] for e in grid.log if e["node"] == node_id_of(1) and e["type"] == "train"}
    assert rounds_with_client_1 == {1, 2}
    with pytest.raises(ValueError, match="nothing has been trained"):
        Unlearning(FedAvg()).request_unlearning("client", 1)


# ---- bad input -----------------------------------------------------------------------------------------------
BASE = """
[run]
rounds = 5
[data]
dataset = "{dataset}"
[data.partitioner]
num_partitions = 5
[[unlearning.requests]]
{request}
"""


@pytest.mark.parametrize(("dataset", "request_toml", "expected"), [
    ("digits", 'at_round = 2\nkind = "client"\ntarget = 9', "unlearning.requests.0.target: there is no client 9"),
    ("digits", 'at_round = 2\nkind = "class"\ntarget = 12', "unlearning.requests.0.target: there is no class 12"),
    ("digits", 'at_round = 5\nkind = "client"\ntarget = 1', "at_round = 5 is not before the run's last round"),
    ("digits", 'at_round = 2\nkind = "client"\ntarget = 1\nmethod = "blindspot"',
     "'blindspot' does not fit classification"),
    ("diabetes", 'at_round = 2\nkind = "client"\ntarget = 1\nmethod = "salun"', "'salun' does not fit regression"),
    ("digits", 'at_round = 2\nkind = "samples"\ntarget = 1\nsamples = [3, 4000]',
     "index 4000 is outside client 1's data"),
    ("digits", 'at_round = 2\nkind = "class"\ntarget = 1\nmethod = "federaser"',
     "'federaser' serves client requests but this request is kind 'class'"),
    ("digits", 'at_round = 2\nkind = "client"\ntarget = 1\nmethod = "salunn"', "did you mean 'salun'"),
    ("diabetes", 'at_round = 2\nkind = "class"\ntarget = 1', "a regression dataset has no classes"),
])
def test_bad_requests_are_one_line_errors_with_exit_code_2(dataset, request_toml, expected, cli, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(BASE.format(dataset=dataset, request=request_toml))
    code, _out, err = cli("run", str(path), "--out", str(tmp_path / "out"))
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_federaser_reproduces_the_original_model_when_the_client_never_took_part(tmp_path, monkeypatch, small_scenario):
    """With a client that was never sampled before its request and full-length calibration (ratio 1), every
    recalibration round repeats the original round (same model, clients and seeds), so each calibrated update
    equals the stored one and FedEraser must land on the pre-request model: a check of the bookkeeping (stored
    rounds, clients, example weights) and of the calibration together."""
    for seed in range(20):
        probe = small_scenario(run__rounds=AT, run__seed=seed, strategy__fraction_train=0.6)
        _, grid, _ = run_spied(probe, tmp_path / f"probe{seed}", monkeypatch)
        sampled = {e["node"] for e in grid.log if e["type"] == "train"}
        never = [pid for pid in range(5) if node_id_of(pid) not in sampled]
        if never:
            break
    assert never, "no seed left a client out of the first rounds"
    outcomes = []
    federaser = methods()["federaser"]

    def record(session, job, strategy):
        result = federaser.serve(session, job, strategy)
        outcomes.append((record_to_state(job.arrays), result.arrays.to_torch_state_dict(), result.rounds))
        return result

    monkeypatch.setitem(methods(), "federaser", dataclasses.replace(federaser, serve=record))
    scenario = unlearn_scenario(small_scenario, [{"at_round": AT, "kind": "client", "target": never[0],
                                                  "method": "federaser"}],
                                {"per_method": {"federaser": {"ratio": 1.0}}}, run__seed=seed,
                                strategy__fraction_train=0.6)
    fedsim.run(scenario, out=tmp_path / "run")
    before, after, rounds = outcomes[0]
    assert rounds == AT - 1
    for key, value in before.items():
        assert torch.allclose(after[key], value, atol=1e-5), key


def test_pga_reference_model_radius_and_settings_follow_the_definition(tmp_path, monkeypatch, small_scenario):
    """w_ref is the other clients' aggregate under FedAvg's example weighting (computed directly from the store:
    the target stored in round AT, so w is that round's aggregate); radius sqrt(mean ||w_ref - w_rand||^2 / 3) over
    10 random models; the target ascends with lr 0.01, momentum 0.9, 5 epochs, clip 5. Uneven partitions, so the
    uniform (N w - w_target) / (N - 1) of the old code would over-subtract a small client and fail this."""
    from fedsim.seeding import derive_seed

    seen = {}
    original = RequestSession.client_step

    def spy(self, job, method, step, arrays, local, nodes=None, extra=None, records=None):
        if method == "pga":
            last = max(t for t in self.store.rounds() if t <= AT and 2 in self.store.updates(t))
            seen.update(strategy=self, last=last, w=record_to_state(job.arrays), sent=arrays.to_torch_state_dict(),
                        extra=dict(extra), local=local, nodes=nodes, stored=self.store.updates(last),
                        global_model=self.store.global_model(last))
        return original(self, job, method, step, arrays, local, nodes, extra, records)

    monkeypatch.setattr(RequestSession, "client_step", spy)
    scenario = unlearn_scenario(small_scenario, [{"at_round": AT, "kind": "client", "target": 2, "method": "pga"}],
                                data__partitioner__name="dirichlet", data__partitioner__alpha=1.0,
                                data__partitioner__min_partition_size=5)
    fedsim.run(scenario, out=tmp_path / "run")
    stored, sent_then = seen["stored"], seen["global_model"]
    assert seen["last"] == AT and len(stored) == 5  # every client's update of round AT, the target's included
    sizes = {pid: n for pid, (_, n) in stored.items()}
    assert len(set(sizes.values())) > 1  # uneven clients: the weighting matters
    others = [pid for pid in stored if pid != 2]
    total = sum(sizes[pid] for pid in others)
    w_ref = {k: sum((sent_then[k] + stored[pid][0][k]) * (sizes[pid] / total) for pid in others) for k in sent_then}
    for key, value in w_ref.items():
        assert torch.allclose(seen["sent"][key], value, atol=1e-5), key
    randoms = [seen["strategy"].random_model(derive_seed(scenario.run.seed, AT, i, 11)) for i in range(10)]
    delta = np.mean([sum(float((w_ref[k] - r[k]).pow(2).sum()) for k in w_ref) for r in randoms]) / 3
    assert seen["extra"]["radius"] == pytest.approx(math.sqrt(delta), rel=1e-5)
    assert seen["extra"]["clip"] == 5.0 and seen["nodes"] == [node_id_of(2)]
    local = seen["local"]
    assert (local.lr, local.momentum, local.local_epochs) == (0.01, 0.9, 5)


def test_blindspot_attention_and_step():
    from fedsim.unlearning.methods.blindspot import attention, blindspot

    a = torch.randn(2, 3, 4, 4)
    expected = a.pow(2).mean(dim=1).flatten(1)
    assert torch.allclose(attention(a), expected / expected.norm(dim=1, keepdim=True))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    blind = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    x_f = torch.randn(32, 4)
    empty = torch.zeros(0, 4)
    cfg = LocalTraining(local_epochs=5, batch_size=8, lr=0.05)
    with torch.no_grad():
        gap = (model(x_f) - blind(x_f)).abs().mean()
    blindspot(model, blind, (empty, torch.zeros(0), x_f, torch.zeros(32)), cfg, 50.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(x_f) - blind(x_f)).abs().mean() < gap  # only forgotten data: pulled toward the blindspot


def test_blindspot_attention_follows_the_authors_by_default():
    """The authors average squared activations over dim 1: for an MLP's (batch, units) activations that is one
    value per example, normalised to 1, so the attention term vanishes (beta has no effect); "units" keeps ours."""
    from fedsim.unlearning.methods.blindspot import attention, blindspot

    a = torch.randn(5, 8)
    assert torch.equal(attention(a), torch.ones(5, 1))
    assert torch.allclose(attention(a, "units"), a.pow(2) / a.pow(2).norm(dim=1, keepdim=True))
    x_f = torch.randn(32, 4)
    data = (torch.zeros(0, 4), torch.zeros(0), x_f, torch.zeros(32))
    cfg = LocalTraining(local_epochs=2, batch_size=8, lr=0.05)

    def trained(beta: float, mode: str) -> torch.Tensor:
        torch.manual_seed(0)
        model, blind = (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)) for _ in range(2))
        blindspot(model, blind, data, cfg, beta, torch.Generator().manual_seed(0), mode)
        return torch.cat([q.detach().flatten() for q in model.parameters()])

    assert torch.equal(trained(50.0, "channels"), trained(0.0, "channels"))
    assert not torch.equal(trained(50.0, "units"), trained(0.0, "units"))


def test_compare_prints_the_method_table_over_seeds_and_plots_gap_against_speed_up(tmp_path, cli, small_scenario):
    dirs = []
    for seed in (1, 2):
        scenario = unlearn_scenario(small_scenario, [{"at_round": AT, "kind": "client", "target": 0,
                                      "method": ["retrain", "finetune", "salun"]}], run__seed=seed)
        dirs.append(str(fedsim.run(scenario, out=tmp_path / f"seed{seed}").run_dir))
    code, out, _ = cli("compare", *dirs, "--markdown", "--png", str(tmp_path / "cmp.png"))
    assert code == 0
    table = [line for line in out.splitlines() if line.startswith("| small | client 0 @ 3 |")]
    assert [line.split(" | ")[2] for line in table] == ["retrain", "finetune", "salun"]
    assert all(" ± " in line and line.split(" | ")[3] == "2" for line in table)
    assert (tmp_path / "cmp-unlearning.png").stat().st_size > 10_000
    code, out, _ = cli("show", dirs[0])
    assert code == 0 and "unlearning client 0 @ 3" in out and "salun" in out


def test_the_readme_method_table_is_the_registrys():
    """README's table of methods is generated from the registry (name, applicability, module docstring)."""
    from pathlib import Path

    from fedsim.unlearning.methods import markdown_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert markdown_table() in readme, "regenerate it: python -c 'from fedsim.unlearning.methods import " \
                                       "markdown_table; print(markdown_table())'"


def test_a_new_method_is_one_module_in_the_registry():
    """Each method declares what it serves; the schema, the client and validation all ask the registry."""
    from fedsim.unlearning.methods import client_steps, fitting

    known = methods()
    assert list(known) == ["retrain", "finetune", "gradient-ascent", "random-label", "salun", "federaser", "pga",
                           "blindspot", "gaussian"]
    assert known["federaser"].kinds == {"client"} and known["salun"].tasks == {"classification"}
    assert set(client_steps()) == {"gradient-ascent", "random-label", "saliency", "salun", "pga", "blindspot",
                                   "gaussian"}
    assert "blindspot" in fitting("regression") and "blindspot" not in fitting("classification")


def test_the_history_store_cannot_rebuild_a_forgotten_clients_update(tmp_path, small_scenario):
    """FedAvg's aggregate is an example-weighted mean, so an update is one equation away from two consecutive
    stored global models and the other clients' stored updates. The attack works on a client that was not
    forgotten (control); for the forgotten client the store no longer holds what it needs, in any round."""
    scenario = unlearn_scenario(small_scenario, [{"at_round": AT, "kind": "client", "target": 2, "method": "finetune"}],
                                data__partitioner__name="dirichlet", data__partitioner__alpha=1.0,
                                data__partitioner__min_partition_size=5)
    fedsim.run(scenario, out=tmp_path / "run")
    store = HistoryStore(tmp_path / "run" / "history")

    def rebuild(t: int, pid: int) -> dict[str, torch.Tensor]:
        stored = store.updates(t)
        total = sum(n for _, n in stored.values())
        g_t, g_next = store.global_model(t), store.global_model(t + 1)
        return {k: (total * (g_next[k] - g_t[k]) - sum(n * u[k] for c, (u, n) in stored.items() if c != pid))
                / stored[pid][1] for k in g_t}

    control = rebuild(AT + 1, 0)  # after the request: client 0's round-4 update from the store alone
    for key, value in store.updates(AT + 1)[0][0].items():
        assert torch.allclose(control[key], value, atol=1e-4), key
    assert store.rounds() == [1, 2, 3, 4, 5] and store.has_global(1)
    for t in store.rounds():
        assert 2 not in store.updates(t)
        assert not (store.has_global(t) and store.has_global(t + 1)) or t >= AT  # from the request on, 2 is out


@pytest.mark.parametrize(("table", "message"), [
    ({"salun": {"fractoin": 0.3}},
     r"salun: unknown key 'fractoin' for unlearning method 'salun'; choose from: rounds, epochs, lr, fraction"),
    ({"pga": {"clip": -1}}, r"pga\.clip: input should be greater than 0"),
    ({"finetune": {"ratio": 0.5}}, r"unknown key 'ratio' for unlearning method 'finetune'"),
])
def test_each_method_checks_its_own_settings_table(small_scenario, table, message):
    with pytest.raises(ScenarioError, match=message):
        unlearn_scenario(small_scenario, [{"at_round": 2, "kind": "client", "target": 1}], {"per_method": table})


def test_a_methods_settings_default_when_its_table_is_absent(small_scenario):
    scenario = unlearn_scenario(small_scenario, [{"at_round": 2, "kind": "client", "target": 1}],
                                {"per_method": {"pga": {"stop_distance": 0.5}}})
    pga, salun = scenario.unlearning.method_settings("pga"), scenario.unlearning.method_settings("salun")
    assert (pga.ascent_lr, pga.ascent_epochs, pga.clip, pga.stop_distance) == (0.01, 5, 5.0, 0.5)
    assert salun.fraction == 0.5 and salun.rounds is None
    dumped = scenario.to_dict()["unlearning"]["per_method"]
    assert dumped == {"pga": {"ascent_lr": 0.01, "ascent_epochs": 5, "clip": 5.0, "stop_distance": 0.5}}


def test_retrain_sees_the_faults_the_run_saw_without_the_forgotten_client(tmp_path, monkeypatch, small_scenario):
    """Faults are drawn per (seed, round, client, phase): retrain's rounds 1..AT lose exactly the clients the run's
    rounds lost (all clients train each round here, so the samples agree), and a later round's faults do not depend
    on how many methods the request listed."""
    faults = {"faults.dropout_rate": 0.3, "faults.failure_rate": 0.1}
    request = [{"at_round": AT, "kind": "client", "target": 2, "method": ["retrain", "finetune"]}]
    _, grid, _ = run_spied(unlearn_scenario(small_scenario, request, **faults), tmp_path, monkeypatch)
    ran = {}
    for e in grid.log:
        if e["type"] == "train" and e["phase"] in ("training", "retrain"):
            ran.setdefault((e["phase"], e["round"]), set()).add(e["node"])
    gone = node_id_of(2)
    lost = [r for r in range(1, AT + 1) if len(ran[("training", r)]) < 5]
    assert lost  # faults did strike the run's first rounds
    for r in range(1, AT + 1):
        assert ran[("retrain", r)] == ran[("training", r)] - {gone}, r
    one_method = [{"at_round": AT, "kind": "client", "target": 2, "method": ["retrain"]}]
    _, other, _ = run_spied(unlearn_scenario(small_scenario, one_method, **faults), tmp_path / "one", monkeypatch)
    later = lambda g: sorted((e["round"], e["node"]) for e in g.log if e["type"] == "train" and e["phase"] == "after")
    assert later(grid) == later(other)


TIMED_METHODS = """
import contextlib, io, json, sys
import fedsim
raw = fedsim.Scenario.load("unlearn-client").to_dict()
raw["run"]["rounds"] = 6
raw["unlearning"]["requests"][0].update(at_round=5, method=sys.argv[1].split(","))
with contextlib.redirect_stdout(io.StringIO()):
    result = fedsim.run(fedsim.Scenario.from_dict(raw))
print(json.dumps({row["method"]: row["time_s"] for row in result.summary["unlearning"]}))
"""


@pytest.mark.slow  # two fresh processes (~10 s each): the one-off cost exists only once per process
def test_the_order_methods_run_in_does_not_change_their_times():
    """The first torch.optim optimizer of a process imports torch._dynamo (1-2 s); in a vectorised run the first
    method that trains one by one used to pay it (gradient ascent 1.2 s first, 0.004 s second). The run's start-up
    pays it now (fedsim.training.warm_up)."""
    import json
    import subprocess
    import sys

    def times(methods: list[str]) -> dict[str, float]:
        out = subprocess.run([sys.executable, "-c", TIMED_METHODS, ",".join(methods)], capture_output=True,
                             text=True, check=True, timeout=300).stdout
        return json.loads(out.strip().splitlines()[-1])

    first, second = times(["gradient-ascent", "pga"]), times(["pga", "gradient-ascent"])
    for method in ("gradient-ascent", "pga"):
        a, b = sorted((first[method], second[method]))
        assert b - a < 0.1 or b < 3 * a, (method, first, second)  # the one-off cost was > 1 s
