"""What an unlearning method is: its name, what it applies to, its server half and its client steps.

A method module defines `METHOD = Method(...)`. The server half, `serve(session, job, strategy) -> Result`,
runs with the Unlearning wrapper (`session`: budget, federated_steps, client_step, train_round, the history
store, ...) from the pre-request state in `job`, on its own copy of the wrapped strategy. A client step,
`step(work: ClientWork) -> ClientResult`, runs in the ClientApp on one client's retained / forgotten split
when a `train.unlearn` message names it (`method` in the ConfigRecord).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from torch import nn

from fedsim import protocol as p
from fedsim.protocol import LocalTraining

KINDS = frozenset({"client", "class", "samples"})
TASKS = frozenset({"classification", "regression"})
Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # x_r, y_r, x_f, y_f


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
    serve: Callable[[Any, Any, Strategy], Result]
    kinds: frozenset[str] = KINDS  # request kinds it can serve
    tasks: frozenset[str] = TASKS  # data it fits
    client_steps: dict[str, ClientStep] = field(default_factory=dict)  # step name (config `method`) -> step
    position: int = 100  # where it is listed

    @property
    def summary(self) -> str:
        return " ".join(inspect.cleandoc(self.doc).split("\n\n")[0].split())
