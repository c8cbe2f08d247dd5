"""`Unlearning(strategy, ...)`: serves machine-unlearning requests around any Flower strategy.

A request (forget a client, a class, or samples of one client) is served after round `at_round`: every listed
method (fedsim.unlearning.methods) runs from the same pre-request state (global model and a copy of the wrapped
strategy's state), is timed and evaluated against `retrain` (docs/algorithms.md, Machine unlearning), and
training continues from the first listed method's result. From then on the forgotten data never takes part again: a forgotten client is never sampled,
and every train / evaluate message tells clients which classes and samples to drop.

Client-side steps run in the ClientApp's `train.unlearn` handler; which node is which client is asked once with
a `query.partition` message. The history store (global models and client updates every `history_interval`
rounds) feeds FedEraser and PGA; a forgotten client's stored updates are deleted when its request is served.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from fedsim.strategies.grid_view import GridView
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim import protocol as p
from fedsim._flower import sampling_kept, seed_sampling
from fedsim.arrays import record_to_state
from fedsim.checkpoint import decode, encode, object_state, restore_object
from fedsim.errors import FedsimError
from fedsim.loop import clients_needed
from fedsim.protocol import LocalTraining
from fedsim.scenario import UnlearningRequest, UnlearningSection
from fedsim.seeding import derive_seed
from fedsim.unlearning.forget import Forgotten
from fedsim.unlearning.history import HistoryStore
from fedsim.unlearning.methods import methods
from fedsim.unlearning.methods.base import weighted
from fedsim.unlearning.metrics import avg_gap

State = dict[str, torch.Tensor]


class _Without(GridView):
    """A view of a Grid that never offers the excluded nodes (forgotten clients) for sampling."""

    def __init__(self, grid: Grid, excluded: set[int]) -> None:
        super().__init__(grid)
        self._excluded = excluded

    def get_node_ids(self) -> list[int]:
        return [n for n in self._grid.get_node_ids() if n not in self._excluded]


@dataclass
class Outcome:
    """One method's run for a request: its model, the strategy state to continue with, rounds and time."""

    name: str
    arrays: ArrayRecord
    strategy: Strategy
    rounds: int
    time_s: float


@dataclass
class Job:
    """One request being served: what it forgets and the state every method starts from."""

    request: UnlearningRequest
    before: Forgotten  # forgotten by earlier requests
    target: Forgotten  # this request's data
    arrays: ArrayRecord  # the global model after round at_round
    grid: Grid

    @property
    def now(self) -> Forgotten:
        return self.before | self.target


class Unlearning(Strategy):
    """Wrap `strategy`; serve `requests` (and `request_unlearning(...)` calls) at their rounds.

    `local` is the clients' training setup (unlearning steps start from it); `evaluate(arrays, this_request,
    everything_forgotten, pre_request_arrays)` returns a method's metrics (fedsim.unlearning.metrics);
    `random_model(seed)` a freshly initialised state dict (PGA's radius, the blindspot model).
    """

    def __init__(self, strategy: Strategy, requests: Iterable[UnlearningRequest] = (), *,
                 settings: UnlearningSection | None = None, local: LocalTraining | None = None, seed: int = 0,
                 timeout: float | None = None, store: HistoryStore | None = None,
                 evaluate: Callable[[ArrayRecord, Forgotten, Forgotten, ArrayRecord], dict] | None = None,
                 random_model: Callable[[int], State] | None = None) -> None:
        self.inner, self.pristine = strategy, copy.deepcopy(strategy)
        self.requests = list(requests)
        self.settings = settings or UnlearningSection()
        self.local = dataclasses.replace(local or LocalTraining(), loss="ce", proximal_mu=0.0)
        self.seed, self.timeout, self.store = seed, timeout, store
        self.evaluate, self.random_model = evaluate, random_model
        self.forgotten = Forgotten()
        self.results: list[dict] = []  # one row per (request, method)
        self.nodes: dict[int, int] = {}  # client (partition) id -> node id
        self._initial: ArrayRecord | None = None
        self._train_config = ConfigRecord()
        self._sent: ArrayRecord | None = None
        self._retrained: dict[tuple, tuple[ArrayRecord, Strategy, dict]] = {}
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
                "nodes": encode(self.nodes), "initial": encode(self._initial),
                "train_config": encode(self._train_config), "last_round": self._last_round}

    def restore_checkpoint(self, state: dict) -> None:
        restore_object(self.inner, state["inner"])
        self.forgotten = Forgotten.from_key(decode(state["forgotten"]))
        self.requests = [UnlearningRequest(**r) for r in decode(state["requests"])]
        self.results, self.nodes = decode(state["results"]), decode(state["nodes"])
        self._initial, self._train_config = decode(state["initial"]), decode(state["train_config"])
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

    def _excluded(self, forgotten: Forgotten) -> set[int]:
        return {self.nodes[c] for c in forgotten.clients if c in self.nodes}

    def _with_forgotten(self, config: ConfigRecord, forgotten: Forgotten) -> ConfigRecord:
        config = ConfigRecord(dict(config))
        if forgotten:
            forgotten.write(config, p.FORGET)
        return config

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if server_round == 1:
            self._initial, self._train_config = arrays, ConfigRecord(dict(config))
        self.purge()  # clients forgotten last round (fedsim's server also purges right after each checkpoint)
        due = [r for r in self.requests if r.at_round == server_round - 1]
        if (due or self.store is not None) and not self.nodes:
            self._discover(grid)
        if due:
            with sampling_kept():
                for request in due:
                    arrays = self._serve(request, arrays, grid)
        self._sent = arrays
        return self.inner.configure_train(server_round, arrays, self._with_forgotten(config, self.forgotten),
                                          _Without(grid, self._excluded(self.forgotten)))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        self._last_round = server_round
        if self.store is not None and self.store.due(server_round):
            self._store(server_round, replies)
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, self._with_forgotten(config, self.forgotten),
                                             _Without(grid, self._excluded(self.forgotten)))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    # ---- bookkeeping ---------------------------------------------------------------------------------------
    def _discover(self, grid: Grid) -> None:
        """Ask every node which client it is (a `query.partition` message each); retried for missing ones."""
        for _ in range(3):
            missing = [n for n in grid.get_node_ids() if n not in self.nodes.values()]
            if not missing:
                return
            messages = [Message(RecordDict(), dst_node_id=n, message_type=p.QUERY_PARTITION) for n in missing]
            for reply in grid.send_and_receive(messages, timeout=self.timeout):
                if not reply.has_error():
                    self.nodes[int(reply.content[p.METRICS][p.PARTITION_ID])] = reply.metadata.src_node_id

    def _store(self, server_round: int, replies: list[Message]) -> None:
        clients = {node: pid for pid, node in self.nodes.items()}
        sent = record_to_state(self._sent)  # read-only: updates are new tensors, the store only saves it
        updates = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error() or node not in clients:
                continue
            state = reply.content[p.ARRAYS].to_torch_state_dict()
            updates[clients[node]] = ({k: state[k] - sent[k] for k in sent},
                                      int(reply.content[p.METRICS][p.NUM_EXAMPLES]))
        self.store.save(server_round, sent, updates)

    # ---- serving a request ---------------------------------------------------------------------------------
    def _serve(self, request: UnlearningRequest, arrays: ArrayRecord, grid: Grid) -> ArrayRecord:
        target = Forgotten.of(request.kind, request.target, request.samples)
        job = Job(request, self.forgotten, target, arrays, grid)
        remaining = len(self.nodes) - len(job.now.clients)
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
        result = methods()[name].serve(self, job, strategy)
        return Outcome(name, result.arrays, result.strategy or strategy, result.rounds, time.perf_counter() - start)

    def _report(self, job: Job, outcomes: list[Outcome]) -> None:
        reference_arrays, _, reference = self.retrain(job)
        baseline = self.evaluate(reference_arrays, job.target, job.now, job.arrays)
        described = {"at_round": job.request.at_round, "kind": job.request.kind, "target": job.request.target}
        if job.request.samples is not None:
            described["samples"] = len(job.request.samples)
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

    # ---- what methods use (fedsim.unlearning.methods) ---------------------------------------------------------
    def retrain(self, job: Job) -> tuple[ArrayRecord, Strategy, dict]:
        """The reference: the same run from the initial model and seeds, forgotten data absent from round 1
        (computed once per set of forgotten data)."""
        key = job.now.key()
        if key not in self._retrained:
            start, strategy, arrays = time.perf_counter(), copy.deepcopy(self.pristine), self._initial
            for server_round in range(1, job.request.at_round + 1):
                arrays = self.train_round(strategy, job.grid, arrays, server_round, job.now)
            info = {"time_s": time.perf_counter() - start, "rounds": job.request.at_round}
            self._retrained[key] = (arrays, strategy, info)
        return self._retrained[key]

    def holders(self, job: Job) -> list[int] | None:
        """The nodes holding this request's data, when the request says (client, samples); else None: all."""
        return None if job.request.kind == "class" else [self.nodes[job.request.target]]

    def config_without(self, forgotten: Forgotten) -> ConfigRecord:
        """The run's train config, telling clients to drop `forgotten`."""
        return self._with_forgotten(self._train_config, forgotten)

    def budget(self, name: str) -> tuple[int, LocalTraining]:
        s = self.settings
        own = s.per_method.get(name)
        rounds = own.rounds if own and own.rounds else s.rounds
        local = dataclasses.replace(self.local, local_epochs=own.epochs if own and own.epochs else s.epochs,
                                    lr=own.lr if own and own.lr else (s.lr or self.local.lr),
                                    batch_size=s.batch_size or self.local.batch_size)
        return rounds, local

    def round_number(self, job: Job, step: int) -> int:
        """Server-round numbers of unlearning rounds: distinct from training rounds, for seeding."""
        return 1_000_000 * (step + 1) + job.request.at_round

    def train_round(self, strategy: Strategy, grid: Grid, arrays: ArrayRecord, server_round: int,
                     forgotten: Forgotten, overrides: dict | None = None) -> ArrayRecord:
        """One ordinary round of `strategy` without the forgotten data; the model is unchanged if all fail."""
        config = self.config_without(forgotten)
        config.update(overrides or {})
        seed_sampling(derive_seed(self.seed, server_round, 0))
        messages = strategy.configure_train(server_round, arrays, config, _Without(grid, self._excluded(forgotten)))
        new, _ = strategy.aggregate_train(server_round, grid.send_and_receive(messages, timeout=self.timeout))
        return new if new is not None else arrays

    def client_step(self, job: Job, method: str, step: int, arrays: ArrayRecord, local: LocalTraining,
                     nodes: list[int] | None = None, extra: dict | None = None,
                     records: dict[str, ArrayRecord] | None = None) -> list[Message]:
        """Send one `train.unlearn` step to `nodes` (default: every client not already forgotten)."""
        config = local.to_config()
        config.update({p.METHOD: method, p.SERVER_ROUND: self.round_number(job, step), p.UNLEARN_STEP: step,
                       **(extra or {})})
        job.before.write(config, p.FORGET)
        job.target.write(config, p.UNLEARN_TARGET)
        if nodes is None:
            nodes = sorted(set(job.grid.get_node_ids()) - self._excluded(job.before))
        content = RecordDict({p.ARRAYS: arrays, p.CONFIG: config, **(records or {})})
        messages = [Message(content, dst_node_id=n, message_type=p.UNLEARN) for n in nodes]
        return [m for m in job.grid.send_and_receive(messages, timeout=self.timeout) if not m.has_error()]

    def federated_steps(self, job: Job, method: str, records: dict | None = None,
                         after: Callable[[ArrayRecord], ArrayRecord] | None = None,
                         nodes: list[int] | None = None) -> tuple[ArrayRecord, int]:
        """`rounds` rounds of one client step, example-weighted average of the replies after each."""
        rounds, local = self.budget(method)
        arrays = job.arrays
        for step in range(rounds):
            arrays = weighted(self.client_step(job, method, step, arrays, local, nodes, records=records)) or arrays
            if after is not None:
                arrays = after(arrays)
        return arrays, rounds
