"""GridView: a Grid that forwards everything to another Grid, for views that change one thing (which nodes are
offered, in which order)."""

from __future__ import annotations

from flwr.app import Message
from flwr.serverapp import Grid


class GridView(Grid):
    """Forwards every Grid call to `grid`; subclasses override what their view changes."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    @property
    def run(self):
        return self._grid.run

    def set_run(self, run) -> None:
        self._grid.set_run(run)

    def create_message(self, *args, **kwargs) -> Message:
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> list[int]:
        return list(self._grid.get_node_ids())

    def push_messages(self, messages, timeout=None):
        return self._grid.push_messages(messages, timeout)

    def pull_messages(self, message_ids):
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):
        return self._grid.send_and_receive(messages, timeout=timeout)
