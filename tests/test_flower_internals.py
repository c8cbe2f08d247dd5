"""Each assumption fedsim makes about Flower beyond its public API (fedsim._flower, numbered as there), checked
against the installed Flower: a newer Flower that breaks one fails here, naming it, not somewhere in a run."""

from __future__ import annotations

import random

import flwr
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fedsim import _flower
from fedsim.arrays import NpyArray, state_to_record
from fedsim.runtime import InlineGrid


def test_the_assumptions_were_checked_against_this_flower():
    assert flwr.__version__.startswith(_flower.FLOWER_VERSION + "."), (
        f"Flower {flwr.__version__}: re-check every assumption in fedsim/_flower.py, then update FLOWER_VERSION")


def test_1_a_pushed_message_gets_its_id():
    _flower.act_as_server(1)
    msg = Message(RecordDict(), 1001, "train")
    _flower.assign_message_id(msg, "msg-7")
    assert msg.metadata.message_id == "msg-7"


def test_2_messages_created_after_act_as_server_are_the_servers():
    _flower.act_as_server(5)
    msg = Message(RecordDict(), 1001, "train")
    assert msg.metadata.src_node_id == SUPERLINK_NODE_ID and msg.metadata.run_id == 5


@pytest.mark.parametrize("array", [np.arange(6, dtype=np.float32).reshape(2, 3), np.float64(2.5), np.zeros(0)])
def test_3_an_npy_array_is_an_array_on_the_wire(array):
    ours, flowers = NpyArray.from_numpy_ndarray(np.asarray(array)), Array(np.asarray(array))
    assert type(ours).__qualname__ == "Array" and isinstance(ours, Array)
    assert ours.object_id == flowers.object_id and ours.data == flowers.data
    assert np.array_equal(ours.numpy(), flowers.numpy())


def test_3_a_filled_record_equals_one_built_item_by_item():
    import torch

    state = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}
    fast, slow = state_to_record(state), ArrayRecord()
    for key, tensor in state.items():
        slow[key] = Array(tensor.numpy())
    assert list(fast.keys()) == list(slow.keys()) and fast.object_id == slow.object_id


def test_4_flowers_strategies_send_one_content_to_every_train_message():
    messages = list(FedAvg().configure_train(1, ArrayRecord(), ConfigRecord(), InlineGrid(None, 4, {})))
    assert len(messages) == 4
    assert list(_flower.shared_content_groups(messages).values()) == [[0, 1, 2, 3]]


def test_5_flowers_sampling_draws_from_the_module_random():
    grid = InlineGrid(None, 20, {})
    _flower.seed_sampling(11)
    first = sample_nodes(grid, 1, 5)[0]
    with _flower.sampling_kept():
        _flower.seed_sampling(99)
        random.random()
    second = sample_nodes(grid, 1, 5)[0]
    _flower.seed_sampling(11)
    assert sample_nodes(grid, 1, 5)[0] == first and sample_nodes(grid, 1, 5)[0] == second


def test_6_a_line_added_while_the_app_runs_prints_before_flowers_exit_handlers(capsys):
    from flwr.supercore.exit import add_exit_handler
    from flwr.supercore.exit.exit_handler import trigger_exit_handlers

    add_exit_handler(lambda: print("flower flushes the log stream"))  # as flwr-simulation does before the app
    _flower.print_after_flowers_exit_message("error: the last line")
    trigger_exit_handlers(run_before_force_exit=True)
    trigger_exit_handlers(run_before_force_exit=False)
    assert capsys.readouterr().out.splitlines() == ["error: the last line", "flower flushes the log stream"]


def test_7_a_reply_built_by_fedsim_is_the_reply_flower_builds():
    from flwr.app import MetricRecord

    _flower.act_as_server(3)
    sent = Message(RecordDict(), 1004, "train", group_id="2", dst_task_id=9)
    _flower.assign_message_id(sent, "msg-12")
    metrics = MetricRecord({"loss": 0.5})
    ours, flowers = _flower.reply_with(sent, {"metrics": metrics}), Message(RecordDict({"metrics": metrics}),
                                                                            reply_to=sent)
    assert vars(ours).keys() == vars(flowers).keys() and not ours.has_error()
    assert ours.content == flowers.content and ours.content.object_id == flowers.content.object_id
    mine, theirs = vars(ours.metadata), vars(flowers.metadata)
    timed = {"_created_at", "_ttl"}
    assert mine.keys() == theirs.keys() and {k: mine[k] for k in mine.keys() - timed} == {
        k: theirs[k] for k in theirs.keys() - timed}
    assert abs(ours.metadata.created_at - flowers.metadata.created_at) < 1
    assert abs(ours.metadata.ttl - flowers.metadata.ttl) < 1 and ours.metadata.ttl <= sent.metadata.ttl
    assert ours.metadata.src_node_id == 1004 and ours.metadata.reply_to_message_id == "msg-12"
