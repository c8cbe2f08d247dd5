"""Every place fedsim relies on Flower beyond its public API, in one module (checked against FLOWER_VERSION by
tests/test_flower_internals.py; docs/design.md, "Flower's internals", lists them).

1. A pushed message's id: Metadata has no public setter; Flower's own Grids write the attribute behind
   `message_id` the same way (`assign_message_id`).
2. Messages created in a process belong to the node `TaskIdentity` names; fedsim's in-process Grids make the
   process the server's, as Flower's ServerApp runner does (`act_as_server`). `Run` (flwr.supercore) is what a Grid
   reports as its run.
3. An `Array`'s attributes and an `ArrayRecord`'s (and a `MetricRecord`'s) storage: fedsim.arrays builds an Array
   from bytes it already has without Flower's argument dispatch (`array_from_parts`), fills a record without its
   per-item type checks (`fill_record`, `metric_record`), and names its Array subclass "Array" so that Flower's wire
   format (object heads, content-addressed ids) treats it as one (`passes_as_array`).
4. Flower's strategies build one RecordDict for all the train messages of a round (configure_train); fedsim trains
   the messages sharing one content object together (`shared_content_groups`). A Flower that built one per message
   would only turn vectorisation off, never change a result.
5. Flower's strategies sample nodes with Python's module-level `random` (strategy_utils.sample_nodes): fedsim seeds
   it right before each configure step (`seed_sampling`) and keeps the stream of ordinary rounds unchanged by the
   rounds an unlearning request runs in between (`sampling_kept`).
6. A Flower process that fails logs the traceback, then its exit message, then runs its exit handlers newest
   first, the last one flushing the run's log stream: a handler added while the app runs prints a line that
   `flwr run` shows last (`print_after_flowers_exit_message`).
7. A Message's and its Metadata's attributes: fedsim's clients build a reply with the metadata Flower derives from
   the message it answers, and its RecordDict, without the constructors' argument dispatch and per-item checks
   (`reply_with`: a vectorised cohort builds one per client every round).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterable, Iterator

from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.app.metadata import Metadata
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.exit import add_exit_handler
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

FLOWER_VERSION = "1.42"  # the version every assumption below was checked against

__all__ = ["FLOWER_VERSION", "Run", "act_as_server", "array_from_parts", "assign_message_id",
           "fill_record", "metric_record", "passes_as_array", "print_after_flowers_exit_message", "reply_with",
           "sampling_kept", "seed_sampling", "shared_content_groups"]


def assign_message_id(msg: Message, message_id: str) -> None:
    """Give a pushed message its id (1)."""
    msg.metadata.__dict__["_message_id"] = message_id


def act_as_server(run_id: int) -> None:
    """Messages created in this process from now on are the server's, in run `run_id` (2)."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID


def array_from_parts(cls: type[Array], dtype: str, shape: tuple[int, ...], data: bytes) -> Array:
    """An Array (or subclass) holding `data`, the .npy bytes of an array of `dtype` and `shape` (3)."""
    array = cls.__new__(cls)
    array.__dict__.update(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data, _is_dirty=True)
    return array


def fill_record(record: ArrayRecord | MetricRecord, items: dict[str, Array | int | float]) -> None:
    """record.update(items) for string keys and values of the record's own type (Arrays; numbers), skipping the
    per-item checks where it can (3)."""
    storage = record.__dict__.get("_data")
    if isinstance(storage, dict) and all(isinstance(k, str) for k in items):
        storage.update(items)
    else:
        for key, value in items.items():
            record[key] = value


def metric_record(values: dict[str, int | float]) -> MetricRecord:
    """MetricRecord(values), for numbers fedsim computed itself, without the per-item checks (3)."""
    record = MetricRecord()
    fill_record(record, values)
    return record


def reply_with(msg: Message, records: dict[str, ArrayRecord | MetricRecord]) -> Message:
    """Message(RecordDict(records), reply_to=msg), for records fedsim built itself (7): the metadata Flower gives a
    reply (the nodes and tasks swapped, the run, group and type kept, the time to live what is left of msg's)."""
    content = RecordDict()
    content.__dict__["_data"].update(records)
    sent, now = msg.metadata.__dict__, time.time()  # Flower's now().timestamp()
    metadata = Metadata.__new__(Metadata)
    metadata.__dict__.update(
        _run_id=sent["_run_id"], _message_id="", _src_node_id=sent["_dst_node_id"], _dst_node_id=sent["_src_node_id"],
        _src_task_id=sent["_dst_task_id"], _dst_task_id=sent["_src_task_id"], _reply_to_message_id=sent["_message_id"],
        _group_id=sent["_group_id"], _created_at=now, _ttl=sent["_created_at"] + sent["_ttl"] - now,
        _message_type=sent["_message_type"], _delivered_at="")
    reply = Message.__new__(Message)
    reply.__dict__.update(_metadata=metadata, _content=content, _error=None)
    return reply


def passes_as_array(cls: type[Array]) -> type[Array]:
    """Class decorator: Flower's wire format sees instances of `cls` as plain Arrays (3)."""
    cls.__qualname__ = "Array"
    return cls


def shared_content_groups(messages: Iterable[Message]) -> dict[int, list[int]]:
    """Indices of the messages that share one content object, by that object (4)."""
    groups: dict[int, list[int]] = {}
    for i, msg in enumerate(messages):
        groups.setdefault(id(msg.content), []).append(i)
    return groups


def seed_sampling(seed: int) -> None:
    """Seed the generator Flower's strategies sample nodes from (5)."""
    random.seed(seed)


@contextlib.contextmanager
def sampling_kept() -> Iterator[None]:
    """Inside, sampling may be reseeded; after, it continues where it was (5)."""
    state = random.getstate()
    try:
        yield
    finally:
        random.setstate(state)


def print_after_flowers_exit_message(line: str) -> None:
    """Print `line` when this Flower process exits, after Flower's own exit message (6)."""
    add_exit_handler(lambda: print(line, flush=True))
