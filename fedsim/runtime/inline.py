"""InlineGrid: runs the ClientApp in this process, one message at a time, deterministically."""

from __future__ import annotations

import time

from flwr.app import Message
from flwr.clientapp import ClientApp

from fedsim.runtime.base import VirtualNodesGrid, run_client


class InlineGrid(VirtualNodesGrid):
    """Virtual clients executed inline by `client_app` (no copies beyond what the Message API makes).

    An in-process client cannot be interrupted, so a per-round timeout needs the Ray runtime.
    """

    def __init__(self, client_app: ClientApp, num_nodes: int, run_config: dict, run_id: int = 1, faults=None,
                 seed: int = 0) -> None:
        super().__init__(num_nodes, run_config, run_id, faults, seed)
        self.client_app = client_app

    def _execute(self, messages: list[Message], timeout: float | None) -> dict[str, Message]:
        replies = {}
        for m in messages:
            time.sleep(self.delays.get(m.metadata.message_id, 0.0))  # a straggler on the real clock ([faults])
            replies[m.metadata.message_id] = run_client(self.client_app, m, self.contexts[m.metadata.dst_node_id])
        return replies
