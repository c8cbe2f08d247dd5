"""Run a scenario in this process and SIGKILL it in the middle of round KILL_ROUND (for the resume tests).

usage: python kill_helpers.py SCENARIO_JSON OUT_DIR KILL_ROUND [--hold-checkpoint]
With --hold-checkpoint the background write of round KILL_ROUND - 1's checkpoint never finishes (the kill finds it
in flight, as a fast round can), so the run dir holds round KILL_ROUND - 2's.
Inline: the process dies when the second client of that round is about to train (one by one), or when the
second reply of its vectorised cohort is being built (with its arrays, or its metrics beside the cohort's partial
result). Ray: it dies right after the round's work has been handed
to the actors, while they train.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

from fedsim import checkpoint
from fedsim.clients import train_together  # the vectorised path builds each reply with train_reply / metrics_reply
from fedsim.runner import run
from fedsim.runtime import base  # run_clients calls base.run_client per message
from fedsim.scenario import Scenario


def _round_of(message) -> int | None:
    config = message.content.config_records.get("config")
    return int(config["server-round"]) if config is not None and "server-round" in config else None


def main() -> None:
    scenario = Scenario.model_validate(json.loads(Path(sys.argv[1]).read_text()))
    out, kill_round = sys.argv[2], int(sys.argv[3])
    seen = []
    if "--hold-checkpoint" in sys.argv[4:]:
        write = checkpoint.write

        def held_write(run_dir, payload):
            if payload["round"] == kill_round - 1:
                threading.Event().wait()  # never set: the process dies with this write in flight
            return write(run_dir, payload)

        checkpoint.write = held_write

    run_client = base.run_client

    def dying_client(app, msg, context):
        if msg.metadata.message_type == "train" and _round_of(msg) == kill_round:
            seen.append(msg)
            if len(seen) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        return run_client(app, msg, context)

    base.run_client = dying_client
    def dying(build):
        def dying_reply(msg, *args):
            if _round_of(msg) == kill_round:
                seen.append(msg)
                if len(seen) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
            return build(msg, *args)

        return dying_reply

    train_together.train_reply = dying(train_together.train_reply)
    train_together.metrics_reply = dying(train_together.metrics_reply)
    if scenario.run.runtime == "ray":
        from fedsim.runtime.ray_grid import RayGrid

        submit = RayGrid._submit

        def dying_submit(self, chunk, actor, reduction):
            ref = submit(self, chunk, actor, reduction)
            if chunk.messages[0].metadata.message_type == "train" and _round_of(chunk.messages[0]) == kill_round:
                os.kill(os.getpid(), signal.SIGKILL)
            return ref

        RayGrid._submit = dying_submit
    run(scenario, out)
    sys.exit("the run finished: it was never killed")


if __name__ == "__main__":
    main()
