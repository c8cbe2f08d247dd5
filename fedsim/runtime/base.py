"""What fedsim's Grids share: virtual nodes registered up front, each with its own persistent Context.

Node ids are stable (1000 + partition id); replies come back ordered by node id; a client that raises
becomes an error reply (as in Flower), never a crashed run. Subclasses only decide where ClientApps execute.
"""

from __future__ import annotations

import itertools
import time
import zlib
from abc import abstractmethod
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedsim._flower import Run, act_as_server, assign_message_id, shared_content_groups
from fedsim.checkpoint import decode, encode
from fedsim.protocol import CONFIG, QUERY_PARTITION, SERVER_ROUND, TRAIN
from fedsim.reduction import Partial, Reduction

NODE_ID_OFFSET = 1000  # node ids 1000, 1001, ...: stable, and clear of Flower's server node id (1)


def node_id_of(partition_id: int) -> int:
    return NODE_ID_OFFSET + partition_id


def run_client(app: ClientApp, msg: Message, context: Context) -> Message:
    """Execute one message; an exception becomes an error reply naming it."""
    try:
        return app(msg, context)
    except Exception as exc:  # noqa: BLE001 - a failing client is a failed reply, never a crashed run
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(exc).__name__}: {exc}"), reply_to=msg)


# (messages, contexts, reduction) -> (replies, the cohort's partial result when reduced): train_together
Cohort = Callable[[list[Message], list[Context], Reduction | None], tuple[list[Message], Partial | None]]


def run_clients(app: ClientApp, cohort: Cohort | None, messages: list[Message], contexts: list[Context],
                delays: list[float], reduction: Reduction | None = None
                ) -> tuple[list[Message], int, list[Partial]]:
    """Execute `messages` (each with its node's context); returns the replies in order, how many were trained
    vectorised and, with `reduction`, the partial result of each cohort (fedsim.reduction: those members' replies
    carry metrics only). Train messages sharing one content object go to `cohort` together (given where the run
    vectorises: fedsim.clients.train_together); the rest, and any whose `delay` (a straggler on the real clock) is
    set, run one by one after sleeping their delay. A cohort that raises is rerun one by one, so a failing client
    is still its own error reply."""
    replies: list[Message | None] = [None] * len(messages)
    eligible = [i for i, (msg, delay) in enumerate(zip(messages, delays))
                if cohort is not None and not delay and msg.metadata.message_type == TRAIN]
    vectorized, partials = 0, []
    for group in shared_content_groups(messages[i] for i in eligible).values():
        members = [eligible[j] for j in group]
        try:
            together, partial = cohort([messages[i] for i in members], [contexts[i] for i in members], reduction)
        except Exception:  # noqa: BLE001, S112 - one by one, each failure becomes that client's error reply
            continue
        vectorized += len(members)
        if partial is not None:
            partials.append(partial)
        for i, reply in zip(members, together, strict=True):
            replies[i] = reply
    for i, (msg, context, delay) in enumerate(zip(messages, contexts, delays)):
        if replies[i] is None:
            time.sleep(delay)
            replies[i] = run_client(app, msg, context)
    return replies, vectorized, partials


def error_reply(msg: Message, code: int, reason: str) -> Message:
    return Message(Error(code, reason), reply_to=msg)


def fault_draws(seed: int, msg: Message) -> np.ndarray:
    """The three uniforms (drop, fail, straggle) of one client task, from (seed, round, client, phase) alone: the
    same task gets the same faults whatever else was sent before it (unlearning's retrain sees the run's faults)."""
    config = msg.content.config_records.get(CONFIG)
    server_round = int(config.get(SERVER_ROUND, 0)) if config is not None else 0
    phase = zlib.crc32(msg.metadata.message_type.encode())
    return np.random.default_rng([seed, server_round, msg.metadata.dst_node_id, phase, 3]).random(3)


NO_FAULTS = {"dropped": 0, "failed": 0, "straggled": 0, "late": 0}


class VirtualNodesGrid(Grid):
    """A Grid over `num_nodes` virtual nodes whose ClientApp runs wherever `_execute` puts it."""

    def __init__(self, num_nodes: int, run_config: dict, run_id: int = 1, faults=None, seed: int = 0) -> None:
        self.faults, self.seed = faults, seed
        self.fault_counts = dict(NO_FAULTS)
        self.delays: dict[str, float] = {}  # message id -> seconds a straggler sleeps (straggler_clock = "real")
        self.sim_time_s = 0.0  # the simulated clock: each push adds its slowest answer (capped at the deadline)
        self._sim_taken = 0.0  # the clock's reading at the last take_fault_counts
        self.vectorized = 0  # client tasks trained vectorised (fedsim.clients.train_together) so far
        self._run = Run.create_empty(run_id)
        act_as_server(run_id)  # messages created in this process are the server's (as in Flower's ServerApp runner)
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
        self._node_ids = list(self.contexts)
        self._ran: set[int] = set()  # nodes whose ClientApp has run (since the last checkpoint, or whose state it
        # held): the only ones whose state can be non-empty
        self._ids = itertools.count(1)
        self._replies: dict[str, Message] = {}
        self._reduction: Reduction | None = None  # what the push under way asks cohorts to send (send_and_reduce)
        self._partials: list[Partial] = []

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def warm_up(self) -> None:
        """Pay the clients' processes' one-off costs of training (fedsim.training.warm_up) before anything is
        timed."""
        from fedsim.training import warm_up

        warm_up()

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def retire(self, node_id: int) -> None:
        """Stop offering `node_id` for sampling (e.g. its privacy budget is spent); its context is kept."""
        if node_id in self._node_ids:
            self._node_ids.remove(node_id)

    def push_messages(self, messages: Iterable[Message], timeout: float | None = None) -> list[str]:
        batch = []
        for msg in messages:
            assign_message_id(msg, f"msg-{next(self._ids)}")
            batch.append(msg)
        known = [m for m in batch if m.metadata.dst_node_id in self.contexts]
        for msg in batch:
            if msg.metadata.dst_node_id not in self.contexts:
                self._replies[msg.metadata.message_id] = error_reply(
                    msg, ErrorCode.NODE_UNAVAILABLE, f"no node {msg.metadata.dst_node_id}")
        if self.faults is not None:
            known = self._inject_faults(known)
        self._replies.update(self._execute(known, timeout, self._reduction))
        self._ran.update(m.metadata.dst_node_id for m in known)
        return [m.metadata.message_id for m in batch]

    def _inject_faults(self, messages: list[Message]) -> list[Message]:
        """Drop (no reply), fail (error reply) or delay each client task, drawn per (seed, round, client, phase)
        (fault_draws); returns what still runs. fedsim's own `query.partition` questions are not client work and
        always answer.

        A straggler answers `straggler_delay_s` late on the simulated clock (or really sleeps that long with
        straggler_clock = "real"); past `deadline_s` its answer is a failure and its work is not run."""
        f, runs, slowest = self.faults, [], 0.0
        self.delays = {}
        for msg in messages:
            if msg.metadata.message_type == QUERY_PARTITION:
                runs.append(msg)
                continue
            draw = fault_draws(self.seed, msg)
            if draw[0] < f.dropout_rate:
                self.fault_counts["dropped"] += 1
            elif draw[1] < f.failure_rate:
                self.fault_counts["failed"] += 1
                self._replies[msg.metadata.message_id] = error_reply(
                    msg, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "simulated failure ([faults] failure_rate)")
            elif draw[2] < f.straggler_rate:
                self.fault_counts["straggled"] += 1
                if f.deadline_s is not None and f.straggler_delay_s > f.deadline_s:
                    self.fault_counts["late"] += 1
                    self._replies[msg.metadata.message_id] = error_reply(
                        msg, ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                        f"missed the simulated deadline: answered after {f.straggler_delay_s:g} s > deadline_s "
                        f"{f.deadline_s:g} s")
                    slowest = max(slowest, f.deadline_s)
                    continue
                slowest = max(slowest, f.straggler_delay_s)
                if f.straggler_clock == "real":
                    self.delays[msg.metadata.message_id] = f.straggler_delay_s
                runs.append(msg)
            else:
                runs.append(msg)
        self.sim_time_s += slowest
        return runs

    def checkpoint_state(self) -> dict:
        """What a resumed run needs: the nodes still offered, client states, the simulated clock."""
        self._ran = {n for n in self._ran if len(self.contexts[n].state)}  # empty until it runs again
        return {"node_ids": list(self._node_ids), "sim_time_s": self.sim_time_s,
                "contexts": encode({n: self.contexts[n].state for n in sorted(self._ran)})}

    def restore_checkpoint(self, state: dict) -> None:
        self._node_ids = [int(n) for n in state["node_ids"]]
        self.sim_time_s = self._sim_taken = float(state.get("sim_time_s", 0.0))
        for node, records in decode(state["contexts"]).items():
            self.contexts[node].state = records
            self._ran.add(node)

    def take_fault_counts(self) -> dict[str, float]:
        """Faults injected since the last call (one call per round, for metrics.jsonl), and the simulated
        duration of those pushes (`sim_time_s`: the slowest answer of each push, added up)."""
        counts = {**self.fault_counts, "sim_time_s": round(self.sim_time_s - self._sim_taken, 6)}
        self.fault_counts, self._sim_taken = dict(NO_FAULTS), self.sim_time_s
        return counts

    @abstractmethod
    def _execute(self, messages: list[Message], timeout: float | None, reduction: Reduction | None
                 ) -> dict[str, Message]:
        """Run the ClientApp for each message (updating `self.contexts`); returns replies by message id. With
        `reduction`, cohorts send partial results (fedsim.reduction), appended to `self._partials`."""

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = self.pull_messages(self.push_messages(messages, timeout))
        return sorted(replies, key=lambda m: m.metadata.src_node_id)

    def send_and_reduce(self, messages: Iterable[Message], reduction: Reduction, *, timeout: float | None = None
                        ) -> tuple[list[Message], list[Partial]]:
        """send_and_receive, where every cohort trained together sends its partial result (fedsim.reduction): the
        replies (its members' with metrics only) and the partials."""
        self._reduction, self._partials = reduction, []
        try:
            replies = self.send_and_receive(messages, timeout=timeout)
        finally:
            self._reduction, partials, self._partials = None, self._partials, []
        return replies, partials

    def describe(self) -> dict:
        """What ran the clients, for summary.json."""
        return {"kind": "inline"}

    def close(self) -> None:
        """Release what the runtime holds."""
