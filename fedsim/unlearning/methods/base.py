"""What an unlearning method is: its name, what it applies to, its server half and its client steps.

A method module defines `METHOD = Method(...)`. The server half, `serve(session, job, strategy) -> Result`,
runs from the pre-request state in `job` (a `Job`), on its own copy of the wrapped strategy, and asks the
`session` (a `Session`: the run's settings, the history store, retrain, and the rounds and client steps it can
send) for everything else. A client step,
`step(work: ClientWork) -> ClientResult`, runs in the ClientApp on one client's retained / forgotten split
when a `train.unlearn` message names it (`method` in the ConfigRecord).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fedsim import protocol as p
from fedsim.protocol import LocalTraining

KINDS = frozenset({"client", "class", "samples", "random"})
TASKS = frozenset({"classification", "regression"})
Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # x_r, y_r, x_f, y_f


State = dict[str, torch.Tensor]


class Job(Protocol):
    """One request being served (fedsim.strategies.unlearning_session.Job)."""

    request: Any  # fedsim.scenario.UnlearningRequest: at_round, kind, target, samples, method
    before: Any  # fedsim.unlearning.forget.Forgotten: forgotten by earlier requests
    target: Any  # Forgotten: this request's data
    arrays: ArrayRecord  # the global model after round at_round
    grid: Any  # the run's Grid

    @property
    def now(self) -> Any:
        """before | target: everything forgotten once this request is served."""


class MethodSettings(BaseModel):
    """A method's table `[unlearning.per_method.<name>]`: the budget overrides every method has; a method with keys
    of its own declares a subclass (its `Method.settings`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True)
    rounds: int | None = Field(None, ge=1)  # default: unlearning.rounds
    epochs: int | None = Field(None, ge=1)  # default: unlearning.epochs
    lr: float | None = Field(None, gt=0)  # default: unlearning.lr, else client.lr


class Session(Protocol):
    """What a method's server half may use while it serves a request (fedsim.strategies.unlearning_session)."""

    settings: Any  # fedsim.scenario.UnlearningSection: the [unlearning] budget and each method's settings
    seed: int
    local: LocalTraining  # the clients' training setup (cross-entropy, no proximal term)
    nodes: dict[int, int]  # client (partition) id -> node id
    store: Any  # fedsim.unlearning.history.HistoryStore, or None
    timeout: float | None  # per round, for anything the method sends itself

    def random_model(self, seed: int) -> State:
        """A freshly initialised model of the run's architecture."""

    def method_settings(self, name: str) -> MethodSettings:
        """Method `name`'s settings: its [unlearning.per_method] table, or its defaults."""

    def fresh_strategy(self) -> Strategy:
        """A copy of the wrapped strategy as it was before round 1."""

    def retrain(self, job: Job) -> tuple[ArrayRecord, Strategy, dict]:
        """The reference: the run from round 1 without everything forgotten (cached per forgotten set)."""

    def holders(self, job: Job) -> list[int] | None:
        """The nodes holding the request's data (client, samples requests), or None: every client."""

    def config_without(self, forgotten: Any) -> ConfigRecord:
        """The run's train config, telling clients to drop `forgotten`."""

    def budget(self, name: str) -> tuple[int, LocalTraining]:
        """Rounds and local training for method `name` ([unlearning] and its per_method overrides)."""

    def round_number(self, job: Job, step: int) -> int:
        """A server-round number for step `step` of the request, distinct from training rounds (for seeding)."""

    def train_round(self, strategy: Strategy, grid: Any, arrays: ArrayRecord, server_round: int, forgotten: Any,
                    overrides: dict | None = None) -> ArrayRecord:
        """One ordinary round of `strategy` without `forgotten`."""

    def client_step(self, job: Job, method: str, step: int, arrays: ArrayRecord, local: LocalTraining,
                    nodes: list[int] | None = None, extra: dict | None = None,
                    records: dict[str, ArrayRecord] | None = None) -> list[Message]:
        """One `train.unlearn` step on `nodes` (default: every client not forgotten before); the good replies."""

    def federated_steps(self, job: Job, method: str, records: dict | None = None,
                        after: Callable[[ArrayRecord], ArrayRecord] | None = None,
                        nodes: list[int] | None = None) -> tuple[ArrayRecord, int]:
        """The method's budget of rounds of one client step, example-weighted after each; (model, rounds)."""


@dataclass
class Result:
    """What a method's server half produced: the new global model and the rounds it took; `strategy` is the
    strategy state training continues with (None: the copy the method was given)."""

    arrays: ArrayRecord
    rounds: int
    strategy: Strategy | None = None


@dataclass
class ClientWork:
    """One client's part of a method: the received model (trained in place), its split, its instructions."""

    model: nn.Module
    data: Split
    local: LocalTraining
    generator: torch.Generator
    config: ConfigRecord
    content: RecordDict  # the message's records (SalUn's mask, the blindspot model)
    task: str
    num_classes: int
    device: torch.device
    new_model: Callable[[], nn.Module]  # an untrained model of the run's architecture, on `device`


@dataclass
class ClientResult:
    """A client step's reply: its metrics, its weight in the example-weighted average, and what it sends
    (None: the trained model's state)."""

    metrics: dict[str, float]
    weight: int
    state: dict[str, torch.Tensor] | None = None


ClientStep = Callable[[ClientWork], ClientResult]


def weighted(replies: list[Message]) -> ArrayRecord | None:
    """Example-weighted mean of the replies' arrays (replies with no examples carry no weight)."""
    useful = [m.content for m in replies if not m.has_error() and m.content[p.METRICS][p.NUM_EXAMPLES] > 0]
    return aggregate_arrayrecords(useful, p.NUM_EXAMPLES) if useful else None


@dataclass(frozen=True)
class Method:
    """An unlearning method, as the registry knows it."""

    name: str
    doc: str  # the module's docstring: its first paragraph is the method's line in tables
    serve: Callable[[Session, Job, Strategy], Result]
    kinds: frozenset[str] = KINDS  # request kinds it can serve
    tasks: frozenset[str] = TASKS  # data it fits
    client_steps: dict[str, ClientStep] = field(default_factory=dict)  # step name (config `method`) -> step
    settings: type[MethodSettings] = MethodSettings  # its [unlearning.per_method.<name>] keys
    position: int = 100  # where it is listed

    @property
    def summary(self) -> str:
        return " ".join(inspect.cleandoc(self.doc).split("\n\n")[0].split())
