"""InlineGrid: runs the ClientApp in this process, one message at a time, deterministically."""

from __future__ import annotations

import torch
from flwr.app import Message
from flwr.clientapp import ClientApp

from fedsim.reduction import Reduction
from fedsim.runtime.base import Cohort, VirtualNodesGrid, run_clients


class InlineGrid(VirtualNodesGrid):
    """Virtual clients executed inline by `client_app` (no copies beyond what the Message API makes).

    With `cohort` (fedsim.clients.train_together.train_together), messages sharing one content are trained together.
    Clients run with `threads` torch threads (run.resources.num_cpus); the process's own setting is restored after
    each batch of messages, so the server's is never changed by a client. An in-process client cannot be
    interrupted, so a per-round timeout needs the Ray runtime.
    """

    def __init__(self, client_app: ClientApp, num_nodes: int, run_config: dict, run_id: int = 1, faults=None,
                 seed: int = 0, cohort: Cohort | None = None, threads: int = 1) -> None:
        super().__init__(num_nodes, run_config, run_id, faults, seed)
        self.client_app, self.cohort, self.threads = client_app, cohort, threads

    def _execute(self, messages: list[Message], timeout: float | None, reduction: Reduction | None
                 ) -> dict[str, Message]:
        contexts = [self.contexts[m.metadata.dst_node_id] for m in messages]
        delays = [self.delays.get(m.metadata.message_id, 0.0) for m in messages]  # stragglers on the real clock
        server_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            replies, vectorized, partials = run_clients(self.client_app, self.cohort, messages, contexts, delays,
                                                        reduction)
        finally:
            torch.set_num_threads(server_threads)
        self.vectorized += vectorized
        self._partials += partials  # on the device the clients trained on
        return {m.metadata.message_id: r for m, r in zip(messages, replies)}

    def describe(self) -> dict:
        return {"kind": "inline", "vectorized_clients": self.vectorized}
