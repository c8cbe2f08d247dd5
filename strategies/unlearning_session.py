"""The session an unlearning method's server half works with (fedsim.unlearning.methods.base.Session): the run's
unlearning settings, its history store and client map, the retrain reference, and the ordinary rounds and
`train.unlearn` client steps a method may send. The Unlearning wrapper (fedsim.strategies.unlearning) owns one and
hands it to every method it runs."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim import protocol as p
from fedsim._flower import seed_sampling
from fedsim.protocol import LocalTraining
from fedsim.scenario import UnlearningRequest, UnlearningSection
from fedsim.seeding import derive_seed
from fedsim.strategies.grid_view import GridView
from fedsim.unlearning.forget import Forgotten
from fedsim.unlearning.history import HistoryStore
from fedsim.unlearning.methods.base import MethodSettings, weighted

State = dict[str, torch.Tensor]


class WithoutForgotten(GridView):
    """A view of a Grid that never offers the excluded nodes (forgotten clients) for sampling."""

    def __init__(self, grid: Grid, excluded: set[int]) -> None:
        super().__init__(grid)
        self._excluded = excluded

    def get_node_ids(self) -> list[int]:
        return [n for n in self._grid.get_node_ids() if n not in self._excluded]


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


class RequestSession:
    """Everything a method may use while serving a request (the `Session` protocol), for one run."""

    def __init__(self, strategy: Strategy, settings: UnlearningSection, local: LocalTraining, seed: int,
                 timeout: float | None, store: HistoryStore | None,
                 random_model: Callable[[int], State] | None) -> None:
        self.pristine = copy.deepcopy(strategy)  # the wrapped strategy before round 1 (retrain starts from it)
        self.settings, self.seed, self.timeout, self.store = settings, seed, timeout, store
        self.local = dataclasses.replace(local, loss="ce", proximal_mu=0.0)
        self._random_model = random_model
        self.nodes: dict[int, int] = {}  # client (partition) id -> node id (asked once: Unlearning._discover)
        self.initial: ArrayRecord | None = None  # the model round 1 started from
        self.train_config = ConfigRecord()  # the run's train config
        self._retrained: dict[tuple, tuple[ArrayRecord, Strategy, dict]] = {}

    def random_model(self, seed: int) -> State:
        if self._random_model is None:
            raise ValueError("this Unlearning wrapper was built without random_model")
        return self._random_model(seed)

    def fresh_strategy(self) -> Strategy:
        return copy.deepcopy(self.pristine)

    def excluded(self, forgotten: Forgotten) -> set[int]:
        """The nodes of forgotten clients."""
        return {self.nodes[c] for c in forgotten.clients if c in self.nodes}

    def with_forgotten(self, config: ConfigRecord, forgotten: Forgotten) -> ConfigRecord:
        """A copy of `config` telling clients to drop `forgotten`."""
        config = ConfigRecord(dict(config))
        if forgotten:
            forgotten.write(config, p.FORGET)
        return config

    def retrain(self, job: Job) -> tuple[ArrayRecord, Strategy, dict]:
        """The reference: the same run from the initial model and seeds, forgotten data absent from round 1
        (computed once per set of forgotten data)."""
        key = job.now.key()
        if key not in self._retrained:
            start, strategy, arrays = time.perf_counter(), self.fresh_strategy(), self.initial
            for server_round in range(1, job.request.at_round + 1):
                arrays = self.train_round(strategy, job.grid, arrays, server_round, job.now)
            info = {"time_s": time.perf_counter() - start, "rounds": job.request.at_round}
            self._retrained[key] = (arrays, strategy, info)
        return self._retrained[key]

    def holders(self, job: Job) -> list[int] | None:
        """The nodes holding this request's data, when the request says (client, samples); else None: all."""
        return None if job.request.kind in ("class", "random") else [self.nodes[job.request.target]]

    def config_without(self, forgotten: Forgotten) -> ConfigRecord:
        """The run's train config, telling clients to drop `forgotten`."""
        return self.with_forgotten(self.train_config, forgotten)

    def method_settings(self, name: str) -> MethodSettings:
        return self.settings.method_settings(name)

    def budget(self, name: str) -> tuple[int, LocalTraining]:
        s, own = self.settings, self.method_settings(name)
        local = dataclasses.replace(self.local, local_epochs=own.epochs or s.epochs, lr=own.lr or s.lr or self.local.lr,
                                    batch_size=s.batch_size or self.local.batch_size)
        return own.rounds or s.rounds, local

    def round_number(self, job: Job, step: int) -> int:
        """Server-round numbers of unlearning rounds: distinct from training rounds, for seeding."""
        return 1_000_000 * (step + 1) + job.request.at_round

    def train_round(self, strategy: Strategy, grid: Grid, arrays: ArrayRecord, server_round: int,
                     forgotten: Forgotten, overrides: dict | None = None) -> ArrayRecord:
        """One ordinary round of `strategy` without the forgotten data; the model is unchanged if all fail."""
        config = self.config_without(forgotten)
        config.update(overrides or {})
        seed_sampling(derive_seed(self.seed, server_round, 0))
        messages = strategy.configure_train(server_round, arrays, config, WithoutForgotten(grid,
                                                                                           self.excluded(forgotten)))
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
            nodes = sorted(set(job.grid.get_node_ids()) - self.excluded(job.before))
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
