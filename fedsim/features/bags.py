"""Learning from aggregate responses (`[bags]`), the whole feature: the bags and released targets a client trains
on (drawn once, kept in its context.state), the bag / instance / interpolating loss (docs/algorithms.md, Learning
from aggregate responses), the settings it sends, its checks and the label-DP ledger. The mechanism and the theory
are fedsim.bag_theory."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from fedsim.bag_theory import make_bags, release
from fedsim.errors import ScenarioError
from fedsim.features.base import ClientJob, ClientTrainingFeature, RoundSetup
from fedsim.loop import RoundCallback
from fedsim.protocol import SentSettings
from fedsim.training import Step, minibatches, train_loop

STATE_KEY = "bags"


@dataclass(frozen=True)
class BagSettings(SentSettings):
    """Learning from aggregate responses (keys prefixed `bags-`): bag size, loss interpolation, label-DP."""

    k: int
    rho: float
    clip: float
    epsilon: float | None = None

    PREFIX = "bags-"


def bag_loss(outputs: torch.Tensor, targets: torch.Tensor, rho: float, task: str) -> torch.Tensor:
    """(1 - rho) L_bag + rho L_inst for a batch of bags; `outputs` is (bags, k, outputs), vectorised over bags.

    Regression: squared loss on the bag-mean prediction (bag) or on every instance (instance).
    Classification: cross-entropy of the proportions against the bag's mean predicted distribution (bag) or against
    every instance's distribution (instance); for k = 1 and one-hot targets both are ordinary cross-entropy.
    """
    total = outputs.new_zeros(())
    if task == "regression":
        pred = outputs.squeeze(-1)
        if rho < 1:
            total = total + (1 - rho) * (targets - pred.mean(dim=1)).pow(2).mean()
        if rho > 0:
            total = total + rho * (targets[:, None] - pred).pow(2).mean()
        return total
    log_p = F.log_softmax(outputs, dim=-1)
    if rho < 1:
        log_mean = torch.logsumexp(log_p, dim=1) - math.log(outputs.shape[1])  # log of the bag's mean distribution
        total = total + (1 - rho) * -(targets * log_mean).sum(-1).mean()
    if rho > 0:
        total = total + rho * -(targets[:, None, :] * log_p).sum(-1).mean()
    return total


def divergence_cause(bags, task: str) -> str | None:
    """Why a bagged classification run with label-DP noise can diverge whatever its learning rate, or None: the
    noisy bag proportions can be negative, and cross-entropy against a negative target has no lower bound."""
    if bags is None or bags.epsilon is None or task != "classification":
        return None
    return (f"bags.epsilon = {bags.epsilon:g} adds Laplace noise of scale {2.0 / (bags.k * bags.epsilon):.3g} to the "
            "bag proportions, and a negative proportion leaves the cross-entropy unbounded below: raise bags.epsilon "
            "or bags.k")


def released_bags(state, pid: int, y: torch.Tensor, num_classes: int, cfg, seed: int) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """This client's bags and released targets, drawn once (seeded by client) and kept in `context.state`."""
    from flwr.app import Array, ArrayRecord

    record = state.array_records.get(STATE_KEY)
    if record is None:
        rng = np.random.default_rng([seed, pid, 11])
        bags = make_bags(len(y), cfg.k, rng)
        targets = release(y.cpu().numpy(), bags, num_classes, cfg.epsilon, cfg.clip, rng)
        record = ArrayRecord(array_dict={"index": Array(bags.astype(np.int64)), "target": Array(targets)})
        state[STATE_KEY] = record
    return torch.from_numpy(record["index"].numpy()), torch.from_numpy(record["target"].numpy())


def train_on_bags(model: torch.nn.Module, x: torch.Tensor, bags: torch.Tensor, targets: torch.Tensor, local,
                  rho: float, task: str, generator: torch.Generator) -> dict[str, float]:
    """Local training on bag targets: shuffled batches of `batch_size // k` bags; returns the mean loss."""
    m, k = bags.shape

    def loss_fn(chosen: torch.Tensor) -> Step:
        outputs = model(x[bags[chosen].reshape(-1)]).view(len(chosen), k, -1)
        loss = bag_loss(outputs, targets[chosen], rho, task)
        return Step(loss, loss, len(chosen))

    batches = minibatches(m, max(1, local.batch_size // k), local.local_epochs, generator)
    return train_loop(model, batches, local, loss_fn).metrics()


def label_privacy(bags) -> dict:
    """The label-DP ledger of aggregate responses: one Laplace release per client, so epsilon never grows."""
    return {"mechanism": "laplace", "epsilon": bags.epsilon, "delta": 0.0, "k": bags.k, "clip": bags.clip,
            "released": "once per client; training is post-processing"}


class LabelPrivacyLedger(RoundCallback):
    """The label-DP entry of every round's row: the same each round (one release; epsilon never grows)."""

    def __init__(self, entry: dict) -> None:
        self.entry = entry

    def round_metrics(self, server_round: int) -> dict:
        return {"label_privacy": self.entry}


class Bags(ClientTrainingFeature):
    name, section, settings = "bags", "bags", BagSettings

    def enabled(self, scenario) -> bool:
        return scenario.bags is not None

    def check(self, scenario, data, model):
        """Clients only ever read their bags' released targets: nothing that reads their true labels runs (federated
        evaluation, q-FedAvg's loss weighting); and every client must fill one bag of k."""
        if scenario.strategy.fraction_evaluate > 0:
            raise ScenarioError("strategy.fraction_evaluate", "> 0 evaluates on clients' true labels, which "
                                "[bags] never releases (the label-DP ledger would not cover it)",
                                "set it to 0 (central evaluation on the test set always runs)")
        if scenario.strategy.name == "qfedavg":
            raise ScenarioError("strategy.name", "'qfedavg' weights clients by their loss on their true labels, which "
                                "[bags] never releases", "use another strategy with [bags]")
        k, sizes = scenario.bags.k, data.label_counts().sum(axis=1)
        smallest = int(sizes.argmin())
        if sizes[smallest] < k:
            raise ScenarioError("bags.k", f"bags of {k} but client {smallest} holds {int(sizes[smallest])} examples",
                                f"use bags.k <= {int(sizes[smallest])}, or fewer / larger partitions")
        return model

    def train_config(self, scenario) -> dict:
        b = scenario.bags
        return BagSettings(k=b.k, rho=b.rho, clip=b.clip, epsilon=b.epsilon).to_config()

    def callbacks(self, scenario, grid, needed: int) -> list[RoundCallback]:
        return [LabelPrivacyLedger(label_privacy(scenario.bags))] if scenario.bags.epsilon is not None else []

    def not_vectorizable(self, scenario) -> str | None:
        return "training on bags' aggregate responses runs one client at a time"

    def train(self, settings: BagSettings, setup: RoundSetup, job: ClientJob) -> dict[str, float]:
        """The client sees only its bags' released targets, never y itself."""
        bag_index, targets = released_bags(job.state, job.pid, job.y, setup.num_classes, settings, setup.run_seed)
        return train_on_bags(setup.model, job.x, bag_index, targets.to(job.x.device), setup.local, settings.rho,
                             setup.task, torch.Generator().manual_seed(job.seed))


FEATURE = Bags()
