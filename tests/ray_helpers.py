"""ClientApps that misbehave on purpose, imported by Ray workers in the Ray runtime tests."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedsim.clients.app import evaluate_global
from fedsim.clients.app import train as fedsim_train


def _misbehaving(action) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        action(int(msg.content["config"]["server-round"]), int(context.node_config["partition-id"]))
        return fedsim_train(msg, context)

    app.evaluate()(evaluate_global)
    return app


def _die_once(rnd: int, pid: int) -> None:
    marker = Path(os.environ["FEDSIM_TEST_MARKER"])
    if rnd == 2 and pid == 2 and not marker.exists():
        marker.write_text("died")
        os._exit(1)  # the whole actor process dies mid-round


def _raise(rnd: int, pid: int) -> None:
    if pid == 1:
        raise RuntimeError("client 1 always fails")


def _hang(rnd: int, pid: int) -> None:
    if rnd == 2 and pid == 0:
        threading.Event().wait()  # never returns: only the round timeout (replacing the actor) ends it


dies_once = _misbehaving(_die_once)
raises = _misbehaving(_raise)
hangs = _misbehaving(_hang)
