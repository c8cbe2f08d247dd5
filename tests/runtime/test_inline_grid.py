"""InlineGrid: stable node ids, persistent contexts, ordered replies, failing clients become error replies."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import fedsim
from fedsim.errors import ClientFailure
from fedsim.runtime import InlineGrid


def echo_app(fail_on: set[int] = frozenset()) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        if pid in fail_on:
            raise RuntimeError(f"client {pid} broke")
        seen = context.state.config_records.get("seen", ConfigRecord({"n": 0}))
        seen["n"] = int(seen["n"]) + 1
        context.state["seen"] = seen
        return Message(RecordDict({"m": MetricRecord({"pid": pid, "n": seen["n"]})}), reply_to=msg)

    return app


def send(grid: InlineGrid, node_ids: list[int]) -> list[Message]:
    msgs = [Message(RecordDict(), node_id, "train") for node_id in node_ids]
    return list(grid.send_and_receive(msgs))


def test_nodes_replies_and_state():
    grid = InlineGrid(echo_app(), 4, {})
    ids = grid.get_node_ids()
    assert ids == [1000, 1001, 1002, 1003] and grid.get_node_ids() == ids
    replies = send(grid, [ids[3], ids[0], ids[2]])
    assert [r.metadata.src_node_id for r in replies] == [1000, 1002, 1003]  # ordered by node id
    assert [r.content["m"]["pid"] for r in replies] == [0, 2, 3]
    replies = send(grid, [ids[0]])
    assert replies[0].content["m"]["n"] == 2  # context.state persisted across rounds


def test_the_checkpoint_holds_the_state_of_every_node_that_ran_and_restores_it():
    from fedsim.checkpoint import decode

    grid = InlineGrid(echo_app(), 6, {})
    ids = grid.get_node_ids()
    send(grid, [ids[4], ids[1]])
    send(grid, [ids[1]])
    state = grid.checkpoint_state()
    assert list(decode(state["contexts"])) == [ids[1], ids[4]]  # those that ran, in node order; the rest are empty
    resumed = InlineGrid(echo_app(), 6, {})
    resumed.restore_checkpoint(state)
    assert [resumed.contexts[n].state["seen"]["n"] for n in (ids[1], ids[4])] == [2, 1]
    assert resumed.checkpoint_state()["contexts"] == state["contexts"]  # restored nodes are checkpointed again
    assert send(resumed, [ids[1]])[0].content["m"]["n"] == 3


def test_a_node_found_empty_is_checkpointed_once_it_holds_state():
    from fedsim.checkpoint import decode

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if "write" in msg.content:  # only when asked: a node may run and keep an empty state
            context.state["seen"] = ConfigRecord({"n": 1})
        return Message(RecordDict(), reply_to=msg)

    grid = InlineGrid(app, 3, {})
    ids = grid.get_node_ids()
    grid.send_and_receive([Message(RecordDict(), n, "train") for n in ids])
    assert decode(grid.checkpoint_state()["contexts"]) == {}  # every node ran, none holds state
    grid.send_and_receive([Message(RecordDict({"write": ConfigRecord({})}), ids[2], "train")])
    assert list(decode(grid.checkpoint_state()["contexts"])) == [ids[2]]
    assert list(decode(grid.checkpoint_state()["contexts"])) == [ids[2]]  # kept while it holds state


def test_a_failing_client_is_an_error_reply():
    grid = InlineGrid(echo_app(fail_on={1}), 3, {})
    replies = send(grid, grid.get_node_ids())
    assert [r.has_error() for r in replies] == [False, True, False]
    assert "client 1 broke" in replies[1].error.reason


def test_run_continues_past_a_failing_client(tmp_path, monkeypatch, small_scenario):
    from fedsim.clients import app as client_module

    original = client_module.train_locally
    calls = {"n": 0}

    def fail_every_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise RuntimeError("simulated crash")
        return original(*args, **kwargs)

    monkeypatch.setattr(client_module, "train_locally", fail_every_third)
    result = fedsim.run(small_scenario(run__rounds=3, run__vectorize=False), out=tmp_path / "run")
    assert result.summary["failures"] == 5  # 15 client tasks, every third fails
    assert all(r["replies"] + r["failures"] == 5 for r in result.metrics)
    assert "simulated crash" in next(r for r in result.metrics if r["failures"])["first_error"]


def test_all_clients_failing_stops_the_run_cleanly(tmp_path, monkeypatch, small_scenario):
    from fedsim.clients import app as client_module

    monkeypatch.setattr(client_module, "train_locally", lambda *a, **k: 1 / 0)
    with pytest.raises(ClientFailure, match="round 1: all 5 clients failed: ZeroDivisionError"):
        fedsim.run(small_scenario(run__vectorize=False), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_cohort_that_raises_is_rerun_one_by_one(tmp_path, monkeypatch, small_scenario):
    from fedsim.clients import train_together as handler

    sequential = fedsim.run(small_scenario(run__rounds=2, run__vectorize=False), out=tmp_path / "sequential")
    monkeypatch.setattr(handler, "train_stacked", lambda *a, **k: 1 / 0)
    rerun = fedsim.run(small_scenario(run__rounds=2, run__vectorize="auto"), out=tmp_path / "rerun")
    assert rerun.summary["runtime"]["vectorized_clients"] == 0 and rerun.summary["failures"] == 0
    assert rerun.final == sequential.final
