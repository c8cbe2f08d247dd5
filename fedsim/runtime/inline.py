"""InlineGrid: runs the ClientApp in this process, one message at a time, deterministically.

Nodes are registered before round 1 with stable ids (node id = 1000 + partition id), each with its own
persistent `Context` (so `context.state` survives across rounds). Replies come back ordered by node id.
A client that raises becomes an error reply (the round goes on with the others), as in Flower.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

NODE_ID_OFFSET = 1000  # node ids 1000, 1001, ...: stable, and clear of Flower's server node id (1)


def node_id_of(partition_id: int) -> int:
    return NODE_ID_OFFSET + partition_id


class InlineGrid(Grid):
    """A Grid whose nodes are virtual clients executed inline by `client_app`."""

    def __init__(self, client_app: ClientApp, num_nodes: int, run_config: dict, run_id: int = 1) -> None:
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        # Messages created in this process are the server's (as in Flower's own ServerApp runner).
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID
        self.contexts = {
            node_id_of(pid): Context(
                run_id=run_id,
                node_id=node_id_of(pid),
                node_config={"partition-id": pid, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for pid in range(num_nodes)
        }
        self._ids = itertools.count(1)
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            msg_id = f"inline-{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = msg_id  # as Flower's own grids do
            self._replies[msg_id] = self._execute(msg)
            ids.append(msg_id)
        return ids

    def _execute(self, msg: Message) -> Message:
        context = self.contexts.get(msg.metadata.dst_node_id)
        if context is None:
            return Message(Error(ErrorCode.NODE_UNAVAILABLE, f"no node {msg.metadata.dst_node_id}"), reply_to=msg)
        try:
            return self.client_app(msg, context)
        except Exception as exc:  # noqa: BLE001 - a failing client is a failed reply, never a crashed run
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(exc).__name__}: {exc}"), reply_to=msg)

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = self.pull_messages(self.push_messages(messages))
        return sorted(replies, key=lambda m: m.metadata.src_node_id)
