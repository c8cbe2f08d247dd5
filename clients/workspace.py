"""What every virtual client of a run shares in one process: its data, one model instance, the device.

The run config names them with a `ClientSpec` (the scenario's data and model sections, the run seed, the
device, and what the enabled features need of the model, e.g. DP-SGD's layer fix): the server-side sections of a
scenario (strategy, rounds, privacy budget, unlearning) never reach a client; its instructions come in each Message.
The runtime, not the client, sets the threads a client trains with (fedsim.runtime).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, Context
from pydantic import BaseModel, ConfigDict

from fedsim import features, protocol
from fedsim.arrays import StateReader
from fedsim.data import FederatedData, federated_data
from fedsim.devices import select_device
from fedsim.models import GivenModel, build_model, decode
from fedsim.scenario import DataSection, ModelSection, Scenario


class ClientSpec(BaseModel):
    """The data and model every client of a run shares, as put in the run config."""

    model_config = ConfigDict(extra="forbid")
    data: DataSection
    model: ModelSection
    seed: int
    device: str = "auto"
    features: dict[str, dict] = {}  # feature name -> what its client_model needs (fedsim.features)
    vectorize_memory_mb: float = 1024  # bound on one vectorised chunk (fedsim.clients.train_together)
    given_model: str | None = None  # fedsim.run(model=...): the architecture, as GivenModel.encoded

    @classmethod
    def of(cls, scenario: Scenario, given: GivenModel | None = None) -> ClientSpec:
        needs = {f.name: f.client_spec(scenario) for f in features.enabled(scenario)}
        return cls(data=scenario.data, model=scenario.model, seed=scenario.run.seed, device=scenario.client.device,
                   features={name: spec for name, spec in needs.items() if spec is not None},
                   vectorize_memory_mb=scenario.run.resources.vectorize_memory_mb,
                   given_model=given.encoded() if given is not None else None)

    def run_config(self) -> dict[str, str]:
        return {protocol.CLIENT_SPEC: self.model_dump_json()}


def client_model(spec: ClientSpec, info, given: Callable[[], torch.nn.Module] | None = None) -> torch.nn.Module:
    """The model clients train, as the enabled features change it (e.g. DP-SGD's checked / fixed layers);
    `given`: the architecture of a model given to fedsim.run(model=...)."""
    model = build_model(spec.model, info, given)
    for name, needs in spec.features.items():
        model = features.named(name).client_model(model, needs)
    return model


class Workspace:
    """Per-process state shared by all virtual clients of one run: data cache and one model instance."""

    def __init__(self, spec: ClientSpec) -> None:
        self.spec = spec
        self.device = select_device(spec.device)
        self.data: FederatedData = federated_data(spec.data, spec.seed)
        self._given = decode(spec.given_model) if spec.given_model else None
        self.model = client_model(spec, self.data.info, self._given).to(self.device)
        self._on_device: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # this process's clients share one read of each round's global model (inline: with the server, runner)
        self.read = StateReader()

    def partition(self, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Partition `pid` on this workspace's device (cached there too when that is a GPU)."""
        if self.device.type == "cpu":
            return self.data.partition(pid)
        if pid not in self._on_device:
            self._on_device[pid] = tuple(t.to(self.device) for t in self.data.partition(pid))
        return self._on_device[pid]

    def new_model(self) -> torch.nn.Module:
        """A fresh instance of the run's architecture on this workspace's device (its weights: arbitrary)."""
        return build_model(self.spec.model, self.data.info, self._given).to(self.device)

    def release(self) -> None:
        """Free cached CUDA memory after a task (the next client may be on another actor's share)."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def task(self) -> str:
        return self.data.info.task

    def load_global(self, arrays: ArrayRecord) -> torch.nn.Module:
        """Load the received global model; the same ArrayRecord object is deserialised only once."""
        self.model.load_state_dict(self.read(arrays))
        return self.model


@functools.lru_cache(maxsize=4)
def _workspace(spec_json: str) -> Workspace:
    return Workspace(ClientSpec.model_validate_json(spec_json))


@functools.lru_cache(maxsize=4)
def _resolve(name_or_path: str) -> str:
    return ClientSpec.of(Scenario.load(name_or_path)).model_dump_json()


def workspace_of(run_config: dict) -> Workspace:
    """The Workspace this process's clients of a run use, from the run config fedsim's runtimes give them."""
    return _workspace(str(run_config[protocol.CLIENT_SPEC]))


def workspace(context: Context) -> Workspace:
    """fedsim's runtimes put the ClientSpec in the run config; `flwr run` puts the scenario's name or path."""
    spec_json = context.run_config.get(protocol.CLIENT_SPEC) or _resolve(str(context.run_config[protocol.SCENARIO]))
    return _workspace(str(spec_json))
