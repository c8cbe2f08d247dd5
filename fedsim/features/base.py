"""What a feature is: one thing a scenario switches on (a privacy mode, training on aggregate responses) with
everything it contributes in one object, the way pfl-research's postprocessors pair a client hook with a server
hook (docs/extending.md, "A new feature").

Server side, each hook with a default that contributes nothing: its scenario check (`check`, which may change
the model, as DP-SGD's layer fix does), the strategy it runs (`strategy`), the keys it adds to every train config
(`train_config`), its round callbacks (`callbacks`), why it keeps a round's clients one by one
(`not_vectorizable`) and what the clients' shared model needs (`client_spec`). Client side: the model change
(`client_model`) and, for a feature whose `settings` a train config carries, the client trainer one by one
(`train`) and vectorised (`train_together`). fedsim's `prepare`, train config, callbacks and ClientApp iterate over
the enabled features (fedsim.features.enabled) and never name one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedsim import protocol
from fedsim.protocol import LocalTraining

if TYPE_CHECKING:  # the scenario and data are server-side; a client never builds them
    import torch
    from flwr.app import RecordDict
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import Strategy
    from torch import nn

    from fedsim.data import FederatedData
    from fedsim.loop import RoundCallback
    from fedsim.scenario import Scenario


@dataclass
class RoundSetup:
    """What every client of one train message shares."""

    model: nn.Module  # the received global model: `train` trains it in place, `train_together` copies it
    local: LocalTraining
    task: str  # "classification" | "regression"
    num_classes: int
    run_seed: int
    memory_mb: float  # bound on one vectorised chunk


@dataclass
class ClientJob:
    """One client's part of a train message."""

    pid: int
    x: torch.Tensor
    y: torch.Tensor
    seed: int  # its seed for the round: (run seed, round, client)
    state: RecordDict  # its context.state, kept across rounds (and in checkpoints)


class Feature(ABC):
    """A feature's hooks: `enabled`, and those of the others it contributes (each default contributes nothing)."""

    name: str = ""  # its name in the ClientSpec and in checkpoints
    section: str = ""  # the scenario section that switches it on (error messages name it)

    # ---- server side ------------------------------------------------------------------------------------------
    @abstractmethod
    def enabled(self, scenario: Scenario) -> bool:
        """Whether `scenario` switches the feature on."""

    def check(self, scenario: Scenario, data: FederatedData, model: nn.Module) -> nn.Module:
        """Refuse what the feature cannot run (a ScenarioError / FedsimError); return the model to train."""
        return model

    def strategy(self, scenario: Scenario, given: Strategy | None) -> Strategy | None:
        """The strategy the run uses: `given` (the user's, or None for the scenario's [strategy]), or the feature's."""
        return given

    def train_config(self, scenario: Scenario) -> dict[str, Any]:
        """Keys added to every train config."""
        return {}

    def callbacks(self, scenario: Scenario, grid: Grid, needed: int) -> list[RoundCallback]:
        """Round callbacks (`needed`: the fewest clients a round runs with); their state goes into checkpoints."""
        return []

    def not_vectorizable(self, scenario: Scenario) -> str | None:
        """Why a round's clients must train one by one under this feature (None: they can be stacked)."""
        return None

    def client_spec(self, scenario: Scenario) -> dict[str, Any] | None:
        """What the clients' model needs (sent in the ClientSpec; None: nothing)."""
        return None

    # ---- client side ------------------------------------------------------------------------------------------
    def client_model(self, model: nn.Module, spec: dict[str, Any]) -> nn.Module:
        """The model clients train, given what `client_spec` sent."""
        return model



class ClientTrainingFeature(Feature):
    """A feature that trains the clients its own way: a train config carrying its `settings` selects `train`.
    Without a vectorised trainer (StackedTrainingFeature) its clients train one by one."""

    settings: type[protocol.SentSettings]  # what it sends clients

    @abstractmethod
    def train(self, settings: Any, setup: RoundSetup, job: ClientJob) -> dict[str, float]:
        """Train `setup.model` in place on the job's data; returns the reply's metrics."""

    def not_vectorizable(self, scenario: Scenario) -> str | None:
        return f"{self.name} trains one client at a time"


class StackedTrainingFeature(ClientTrainingFeature):
    """A client-training feature that can also train a round's clients at once."""

    def not_vectorizable(self, scenario: Scenario) -> str | None:
        return None

    @abstractmethod
    def train_together(self, settings: Any, setup: RoundSetup, jobs: list[ClientJob]
                       ) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, float]]]:
        """Every job trained from `setup.model` at once: the final states, chunk by chunk (each stacked along a
        leading client axis, jobs in order: fedsim.stacked.StackedClients.parts), and each job's metrics, as `train`
        leaves them."""


class PrivacyFeature(Feature):
    """A privacy mode (`privacy.mode`): clients reply with accounting metrics only unless privacy.report_uncovered."""

    mode: str = ""
    section = "privacy"

    def enabled(self, scenario: Scenario) -> bool:
        return scenario.privacy is not None and scenario.privacy.mode == self.mode

    def train_config(self, scenario: Scenario) -> dict[str, Any]:
        return {} if scenario.privacy.report_uncovered else {protocol.REPORT_TRAIN_METRICS: False}


def uncovered(scenario: Scenario) -> list[str]:
    """What a private run releases that its epsilon does not cover (privacy.report_uncovered = true)."""
    p = scenario.privacy
    if p is None or not p.report_uncovered:
        return []
    return ["clients' training loss and accuracy"] + (
        ["federated evaluation on clients' data"] if scenario.strategy.fraction_evaluate > 0 else [])


def ledger_entry(privacy, ledger, retired: int, released: list[str]) -> dict:
    """A privacy ledger row entry: the accountant's numbers, the mode and target, and what epsilon does not cover."""
    entry = ledger.to_dict()
    entry.update(mode=privacy.mode, target_epsilon=privacy.target_epsilon, retired_clients=retired)
    if released:
        entry["uncovered"] = released
    return entry
