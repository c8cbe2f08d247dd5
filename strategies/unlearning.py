"""`Unlearning(strategy, ...)`: serves machine-unlearning requests around any Flower strategy.

A request (forget a client, a class, or samples of one client) is served after round `at_round`: every listed
method (fedsim.unlearning.methods) runs from the same pre-request state (global model and a copy of the wrapped
strategy's state), is timed and evaluated against `retrain` (docs/algorithms.md, Machine unlearning), and
training continues from the first listed method's result. From then on the forgotten data never takes part again: a
forgotten client is never sampled,
and every train / evaluate message tells clients which classes and samples to drop.

The wrapper forwards every Strategy method to the wrapped strategy explicitly (as Flower's DP wrappers do), keeps
the bookkeeping (what is forgotten, the history store's rounds, the results table) and serves requests; the
methods work through its `session` (fedsim.strategies.unlearning_session.RequestSession, the typed
`fedsim.unlearning.methods.base.Session`). Client-side steps run in the ClientApp's `train.unlearn` handler; which
node is which client is asked once with a `query.partition` message. The history store (global models and client
updates every `history_interval` rounds), given at construction, feeds FedEraser and PGA; a forgotten client's
stored updates are deleted when its request is served.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim import protocol as p
from fedsim._flower import sampling_kept
from fedsim.arrays import record_to_state
from fedsim.checkpoint import decode, encode, object_state, restore_object
from fedsim.errors import FedsimError
from fedsim.loop import clients_needed
from fedsim.protocol import LocalTraining
from fedsim.reduction import STACK, Partial, Reduction, reduce_stack
from fedsim.scenario import UnlearningRequest, UnlearningSection
from fedsim.strategies import early
from fedsim.strategies.unlearning_session import Job, RequestSession, WithoutForgotten
from fedsim.unlearning.forget import Forgotten
from fedsim.unlearning.history import HistoryStore
from fedsim.unlearning.methods import methods
from fedsim.unlearning.metrics import avg_gap

State = dict[str, torch.Tensor]


@dataclass
class Outcome:
    """One method's run for a request: its model, the strategy state to continue with, rounds and time."""

    name: str
    arrays: ArrayRecord
    strategy: Strategy
    rounds: int
    time_s: float


class Unlearning(Strategy):
    """Wrap `strategy`; serve `requests` (and `request_unlearning(...)` calls) at their rounds.

    `local` is the clients' training setup (unlearning steps start from it); `store` the history store (None: none
    kept, so FedEraser and PGA cannot run); `evaluate(arrays, this_request, everything_forgotten,
    pre_request_arrays)` returns a method's metrics (fedsim.unlearning.metrics); `random_model(seed)` a freshly
    initialised state dict (PGA's radius, the blindspot model).
    """

    def __init__(self, strategy: Strategy, requests: Iterable[UnlearningRequest] = (), *,
                 settings: UnlearningSection | None = None, local: LocalTraining | None = None, seed: int = 0,
                 timeout: float | None = None, store: HistoryStore | None = None,
                 evaluate: Callable[[ArrayRecord, Forgotten, Forgotten, ArrayRecord], dict] | None = None,
                 random_model: Callable[[int], State] | None = None, sizes: list[int] | None = None) -> None:
        """`sizes`: every client's number of examples (kind 'random' requests forget a share of each)."""
        self.inner = strategy
        self.sizes, self.seed = sizes, seed
        self.session = RequestSession(strategy, settings or UnlearningSection(), local or LocalTraining(), seed,
                                      timeout, store, random_model)
        self.requests = list(requests)
        self.store, self.timeout, self.evaluate = store, timeout, evaluate
        self.forgotten = Forgotten()
        self.results: list[dict] = []  # one row per (request, method)
        self._sent: ArrayRecord | None = None
        self._last_round = 0

    @property
    def min_train_nodes(self) -> int:
        return getattr(self.inner, "min_train_nodes", 1)

    @property
    def min_available_nodes(self) -> int:
        return getattr(self.inner, "min_available_nodes", 1)

    def request_unlearning(self, kind: str, target: int, method: str | list[str] = "retrain",
                           samples: list[int] | None = None, at_round: int | None = None) -> None:
        """Queue a request; without `at_round` it is served before the next round."""
        at_round = self._last_round if at_round is None else at_round
        if at_round < 1:
            raise ValueError("nothing has been trained yet; request unlearning after round 1")
        self.requests.append(UnlearningRequest(at_round=at_round, kind=kind, target=target, samples=samples,
                                               method=method))

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        """What a resumed run needs (the retrain cache is rebuilt on demand, identically)."""
        return {"inner": object_state(self.inner), "forgotten": encode(self.forgotten.key()),
                "requests": encode([r.model_dump() for r in self.requests]), "results": encode(self.results),
                "nodes": encode(self.session.nodes), "initial": encode(self.session.initial),
                "train_config": encode(self.session.train_config), "last_round": self._last_round}

    def restore_checkpoint(self, state: dict) -> None:
        restore_object(self.inner, state["inner"])
        self.forgotten = Forgotten.from_key(decode(state["forgotten"]))
        self.requests = [UnlearningRequest(**r) for r in decode(state["requests"])]
        self.results, self.session.nodes = decode(state["results"]), decode(state["nodes"])
        self.session.initial, self.session.train_config = decode(state["initial"]), decode(state["train_config"])
        self._last_round = int(state["last_round"])

    def purge(self) -> None:
        """Delete every stored update of a forgotten client. Runs before each round; call it after the last
        round too (fedsim's server calls it after every checkpoint, so a resumed run can serve a request again)."""
        if self.store is not None:
            for client in self.forgotten.clients:
                served_after = min(r.at_round for r in self.requests if r.kind == "client" and r.target == client)
                self.store.forget_client(client, served_after)

    # ---- Strategy ------------------------------------------------------------------------------------------
    def summary(self) -> None:
        self.inner.summary()

    def _without_forgotten(self, grid: Grid) -> Grid:
        return WithoutForgotten(grid, self.session.excluded(self.forgotten))

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if server_round == 1:
            self.session.initial, self.session.train_config = arrays, ConfigRecord(dict(config))
        self.purge()  # clients forgotten last round (fedsim's server also purges right after each checkpoint)
        due = [r for r in self.requests if r.at_round == server_round - 1]
        if (due or self.store is not None) and not self.session.nodes:
            self._discover(grid)
        if due:
            with sampling_kept():
                for request in due:
                    arrays = self._serve(request, arrays, grid)
        self._sent = arrays
        return self.inner.configure_train(server_round, arrays, self.session.with_forgotten(config, self.forgotten),
                                          self._without_forgotten(grid))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        return self.aggregate_partials(server_round, replies, [])

    def reduction(self, server_round: int) -> Reduction | None:
        """The wrapped strategy's reduction; in a round the history store keeps, every member's state (a stack)."""
        inner = early.reduction_for(self.inner, server_round)
        if inner is not None and self.store is not None and self.store.due(server_round):
            return Reduction(STACK, inner.weighted_by_key)
        return inner

    def aggregate_partials(self, server_round: int, replies: Iterable[Message], partials: list[Partial]):
        """Store the round's updates when due, then aggregate with the wrapped strategy (stacks reduced here to what
        it takes)."""
        replies = list(replies)
        self._last_round = server_round
        if self.store is not None and self.store.due(server_round):
            self._store(server_round, replies, partials)
        inner = early.reduction_for(self.inner, server_round)
        if partials and partials[0].kind == STACK and inner.kind != STACK:
            sent = record_to_state(self._sent)
            partials = [replace(reduce_stack(inner, p.nodes, p.weights, [p.arrays], sent), metrics=p.metrics)
                        for p in partials]
        return early.aggregate(self.inner, server_round, replies, partials)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, self.session.with_forgotten(config, self.forgotten),
                                             self._without_forgotten(grid))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    # ---- bookkeeping ---------------------------------------------------------------------------------------
    def _discover(self, grid: Grid) -> None:
        """Ask every node which client it is (a `query.partition` message each); retried for missing ones."""
        for _ in range(3):
            missing = [n for n in grid.get_node_ids() if n not in self.session.nodes.values()]
            if not missing:
                return
            messages = [Message(RecordDict(), dst_node_id=n, message_type=p.QUERY_PARTITION) for n in missing]
            for reply in grid.send_and_receive(messages, timeout=self.timeout):
                if not reply.has_error():
                    self.session.nodes[int(reply.content[p.METRICS][p.PARTITION_ID])] = reply.metadata.src_node_id

    def _store(self, server_round: int, replies: list[Message], partials: list[Partial]) -> None:
        """Every client's update of the round (from its reply's arrays, or its row of its cohort's stack)."""
        clients = {node: pid for pid, node in self.session.nodes.items()}
        sent = record_to_state(self._sent)  # read-only: updates are new tensors, the store only saves it
        states = {}
        for partial in partials:
            for i, node in enumerate(partial.nodes):
                states[node] = {k: v[i].cpu() for k, v in partial.arrays.items()}
        updates = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error() or node not in clients:
                continue
            state = states[node] if node in states else reply.content[p.ARRAYS].to_torch_state_dict()
            updates[clients[node]] = ({k: state[k] - sent[k] for k in sent},
                                      int(reply.content[p.METRICS][p.NUM_EXAMPLES]))
        self.store.save(server_round, sent, updates)

    # ---- serving a request ---------------------------------------------------------------------------------
    def _serve(self, request: UnlearningRequest, arrays: ArrayRecord, grid: Grid) -> ArrayRecord:
        if request.kind == "random":
            if self.sizes is None:
                raise ValueError("a kind 'random' request needs the clients' sizes: pass sizes= to Unlearning")
            target = Forgotten.random(request.fraction, self.sizes, self.seed, request.at_round)
        else:
            target = Forgotten.of(request.kind, request.target, request.samples)
        job = Job(request, self.forgotten, target, arrays, grid)
        remaining = len(self.session.nodes) - len(job.now.clients)
        needed = clients_needed(self)
        if remaining < needed:
            raise FedsimError(f"unlearning request (client {request.target})",
                              f"only {remaining} clients would remain but the strategy needs {needed}",
                              "lower strategy.min_available_nodes / min_train_nodes")
        outcomes = [self._run_method(name, job) for name in request.method]
        if self.evaluate is not None:
            self._report(job, outcomes)
        self.forgotten = job.now  # the client's stored updates go at the end of the round (purge)
        self.inner = outcomes[0].strategy
        return outcomes[0].arrays

    def _run_method(self, name: str, job: Job) -> Outcome:
        """Run method `name` from the pre-request state on its own copy of the wrapped strategy, timed."""
        start, strategy = time.perf_counter(), copy.deepcopy(self.inner)
        result = methods()[name].serve(self.session, job, strategy)
        return Outcome(name, result.arrays, result.strategy or strategy, result.rounds, time.perf_counter() - start)

    def _report(self, job: Job, outcomes: list[Outcome]) -> None:
        reference_arrays, _, reference = self.session.retrain(job)
        baseline = self.evaluate(reference_arrays, job.target, job.now, job.arrays)
        request = job.request  # a random request is described by its fraction where others name their target
        described = {"at_round": request.at_round, "kind": request.kind,
                     "target": request.fraction if request.kind == "random" else request.target}
        if job.request.samples is not None or job.request.kind == "random":
            described["samples"] = sum(len(idx) for idx in job.target.samples.values())
        for outcome in outcomes:
            elapsed = reference["time_s"] if outcome.name == "retrain" else outcome.time_s
            measured = self.evaluate(outcome.arrays, job.target, job.now, job.arrays)
            row = {"request": described, "method": outcome.name, **{k: round(v, 4) for k, v in measured.items()}}
            row["avg_gap"] = round(avg_gap(measured, baseline), 4)
            if "relearn_steps" in row:  # regression: the anamnesis index
                row["ain"] = round(row["relearn_steps"] / baseline["relearn_steps"], 4) if baseline["relearn_steps"] \
                    else None
            row.update(time_s=round(elapsed, 4), rounds=outcome.rounds,
                       speedup=round(reference["time_s"] / elapsed, 3) if elapsed > 0 else None)
            self.results.append(row)
