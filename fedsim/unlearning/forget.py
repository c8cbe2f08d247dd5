"""What has been forgotten: whole clients, classes everywhere, sample indices of one client, and random shares of
every client's examples (resolved to indices, seeded).

Servers send it to clients in the ConfigRecord (int lists under a prefix); clients drop those examples from their
partition before doing anything with it. `check_requests` rejects requests naming data a run does not have.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.app import ConfigRecord

from fedsim.errors import ScenarioError
from fedsim.unlearning.methods import fitting, methods

if TYPE_CHECKING:
    from fedsim.data import FederatedData
    from fedsim.scenario import Scenario


RANDOM_FORGETTING = 0x5A11  # the stream a kind 'random' request's draws come from


@dataclass(frozen=True)
class Forgotten:
    """A set of forgotten data; `kept(pid, y)` marks the examples of partition `pid` that remain."""

    clients: frozenset[int] = frozenset()
    classes: frozenset[int] = frozenset()
    samples: dict[int, frozenset[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, kind: str, target: int | None, samples: list[int] | None = None) -> Forgotten:
        """The data one request names (kind 'random': `Forgotten.random`)."""
        if kind == "client":
            return cls(clients=frozenset([target]))
        if kind == "class":
            return cls(classes=frozenset([target]))
        return cls(samples={target: frozenset(samples or [])})

    @classmethod
    def random(cls, fraction: float, sizes: list[int], seed: int, at_round: int) -> Forgotten:
        """round(fraction * n_i) examples of every client i (n_i examples), drawn without replacement, seeded by
        (seed, at_round, client): SalUn's random forgetting, federated."""
        samples = {}
        for pid, n in enumerate(sizes):
            k = round(fraction * n)
            if k:
                rng = np.random.default_rng([seed, at_round, pid, RANDOM_FORGETTING])
                samples[pid] = frozenset(int(i) for i in rng.choice(n, k, replace=False))
        return cls(samples=samples)

    def __or__(self, other: Forgotten) -> Forgotten:
        samples = dict(self.samples)
        for pid, idx in other.samples.items():
            samples[pid] = samples.get(pid, frozenset()) | idx
        return Forgotten(self.clients | other.clients, self.classes | other.classes, samples)

    def __bool__(self) -> bool:
        return bool(self.clients or self.classes or self.samples)

    def key(self) -> tuple:
        """A hashable identity (for caching the retrain reference)."""
        return (tuple(sorted(self.clients)), tuple(sorted(self.classes)),
                tuple(sorted((pid, tuple(sorted(idx))) for pid, idx in self.samples.items())))

    @classmethod
    def from_key(cls, key: tuple) -> Forgotten:
        clients, classes, samples = key
        return cls(frozenset(clients), frozenset(classes), {int(p): frozenset(idx) for p, idx in samples})

    def kept(self, pid: int, y: torch.Tensor) -> torch.Tensor:
        """Boolean mask over partition `pid` (labels `y`): True where the example is not forgotten."""
        if pid in self.clients:
            return torch.zeros(len(y), dtype=torch.bool)
        keep = torch.ones(len(y), dtype=torch.bool)
        if self.classes and not torch.is_floating_point(y):
            keep &= ~torch.isin(y, torch.tensor(sorted(self.classes), dtype=y.dtype))
        if pid in self.samples:
            keep[torch.tensor(sorted(self.samples[pid]), dtype=torch.long)] = False
        return keep

    # ---- over the Message API --------------------------------------------------------------------------
    def write(self, config: ConfigRecord, prefix: str) -> None:
        """Store in `config` as int lists: <prefix>-clients, -classes, -sample-clients, -sample-indices."""
        pairs = [(pid, i) for pid, idx in sorted(self.samples.items()) for i in sorted(idx)]
        config[f"{prefix}-clients"] = sorted(self.clients)
        config[f"{prefix}-classes"] = sorted(self.classes)
        config[f"{prefix}-sample-clients"] = [p for p, _ in pairs]
        config[f"{prefix}-sample-indices"] = [i for _, i in pairs]

    @classmethod
    def read(cls, config: ConfigRecord, prefix: str) -> Forgotten:
        samples: dict[int, set[int]] = {}
        for pid, i in zip(config.get(f"{prefix}-sample-clients", []), config.get(f"{prefix}-sample-indices", []),
                          strict=True):
            samples.setdefault(int(pid), set()).add(int(i))
        return cls(frozenset(int(c) for c in config.get(f"{prefix}-clients", [])),
                   frozenset(int(c) for c in config.get(f"{prefix}-classes", [])),
                   {pid: frozenset(idx) for pid, idx in samples.items()})


def check_requests(scenario: Scenario, data: FederatedData) -> None:
    """Raise ScenarioError for a request that names data the run does not have or a method that does not fit."""
    unlearning = scenario.unlearning
    if unlearning is None:
        return
    for name, section in (("privacy", scenario.privacy), ("bags", scenario.bags)):
        if section is not None:
            raise ScenarioError("unlearning", f"cannot be combined with [{name}] in this version",
                                f"remove [{name}] or [unlearning]")
    task, classes = data.info.task, data.info.num_classes
    forgotten_clients: set[int] = set()
    for i, r in enumerate(unlearning.requests):
        where = f"unlearning.requests.{i}"
        unfit = [m for m in r.method if task not in methods()[m].tasks]
        if unfit:
            fits = ", ".join(m for m in fitting(task) if m != "retrain")
            raise ScenarioError(f"{where}.method", f"'{unfit[0]}' does not fit {task} data",
                                f"use retrain or one of {fits}")
        if r.kind == "class":
            if task == "regression":
                raise ScenarioError(f"{where}.kind", "a regression dataset has no classes",
                                    "use kind = 'client' or 'samples'")
            if r.target >= classes:
                raise ScenarioError(f"{where}.target", f"there is no class {r.target} (classes are 0..{classes - 1})",
                                    f"use a class label below {classes}")
        if r.kind == "samples":
            size = len(data.partition(r.target)[1])
            bad = [s for s in r.samples if not 0 <= s < size]
            if bad:
                raise ScenarioError(f"{where}.samples", f"index {bad[0]} is outside client {r.target}'s data "
                                    f"({size} examples)", f"use indices 0..{size - 1}")
        if r.kind == "random" and not any(round(r.fraction * n) for n in partition_sizes(data)):
            raise ScenarioError(f"{where}.fraction", f"{r.fraction} of every client's examples rounds to none",
                                "raise the fraction")
        if r.kind == "client":
            forgotten_clients.add(r.target)
    n, minimums = data.num_partitions, scenario.strategy.node_minimums(data.num_partitions)
    needed = max(minimums["min_available_nodes"], minimums["min_train_nodes"])
    if n - len(forgotten_clients) < needed:
        raise ScenarioError("unlearning.requests", f"forgetting {len(forgotten_clients)} clients leaves "
                            f"{n - len(forgotten_clients)}, fewer than the {needed} the strategy waits for",
                            "forget fewer clients or lower strategy.min_available_nodes / min_train_nodes")


def partition_sizes(data: FederatedData) -> list[int]:
    """Every client's number of examples (image data: without decoding them)."""
    return [len(data.labels(i)) for i in range(data.num_partitions)]
