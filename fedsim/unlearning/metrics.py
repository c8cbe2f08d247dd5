"""How well a model forgot (docs/algorithms.md, Machine unlearning): UA, RA, TA, MIA-efficacy and the gap to retrain;
for regression, L1 on forgotten / retained / test data, loss-based MIA and the anamnesis index (AIN)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn
from torch.nn import functional as F

from fedsim.arrays import record_to_state
from fedsim.data import FederatedData
from fedsim.evaluation import predict
from fedsim.protocol import LocalTraining
from fedsim.training import Step, train_loop
from fedsim.unlearning.forget import Forgotten

GAP_KEYS = {"classification": ("ua", "ra", "ta", "mia"), "regression": ("forgotten_l1", "retained_l1", "test_l1")}
RELEARN_MAX_STEPS = 2000


def mia_efficacy(members: np.ndarray, non_members: np.ndarray, queried: np.ndarray, seed: int = 0) -> float:
    """SVC(C=3, gamma='auto', rbf) on one feature per example, members (1) vs non-members (0) in equal counts;
    returns the percentage of `queried` examples predicted non-member."""
    if len(queried) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    n = min(len(members), len(non_members))
    x = np.concatenate([rng.choice(members, n, replace=False), rng.choice(non_members, n, replace=False)])
    labels = np.concatenate([np.ones(n), np.zeros(n)])
    from sklearn.svm import SVC  # scikit-learn costs ~1 s to import: only when an attack is fitted

    attack = SVC(C=3, gamma="auto", kernel="rbf").fit(x.reshape(-1, 1), labels)
    return float((attack.predict(queried.reshape(-1, 1)) == 0).mean() * 100)


def avg_gap(row: dict, reference: dict) -> float:
    """Mean absolute difference to the retrain reference over UA, RA, TA, MIA (regression: the three L1s)."""
    keys = GAP_KEYS["classification" if "ua" in row else "regression"]
    return float(np.mean([abs(row[k] - reference[k]) for k in keys]))


class UnlearningEvaluator:
    """Measures a global model against the forgotten, retained and test data of a run (server side)."""

    def __init__(self, data: FederatedData, model: nn.Module, seed: int = 0, lr: float = 0.01,
                 batch_size: int = 32) -> None:
        self.data, self.model, self.seed = data, copy.deepcopy(model), seed
        self.lr, self.batch_size = lr, batch_size
        self.task = data.info.task
        self._original_loss: tuple[ArrayRecord | None, float] = (None, 0.0)
        self._splits: dict[tuple, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}

    def split(self, target: Forgotten, everything: Forgotten) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """forgotten (this request's data), retained (training data never forgotten) and test data; after a
        class request the test set holds the remaining classes only. Built once per request, for all methods."""
        key = (target.key(), everything.key())
        if key not in self._splits:
            self._splits[key] = self._split(target, everything)
        return self._splits[key]

    def _split(self, target: Forgotten, everything: Forgotten) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        parts = {"forgotten": ([], []), "retained": ([], [])}
        for pid in range(self.data.num_partitions):
            x, y = self.data.partition(pid)
            for name, mask in (("forgotten", ~target.kept(pid, y)), ("retained", everything.kept(pid, y))):
                parts[name][0].append(x[mask])
                parts[name][1].append(y[mask])
        out = {name: (torch.cat(xs), torch.cat(ys)) for name, (xs, ys) in parts.items()}
        x_test, y_test = self.data.test
        if everything.classes and self.task == "classification":
            keep = ~torch.isin(y_test, torch.tensor(sorted(everything.classes), dtype=y_test.dtype))
            x_test, y_test = x_test[keep], y_test[keep]
        out["test"] = (x_test, y_test)
        return out

    def __call__(self, arrays: ArrayRecord, target: Forgotten, everything: Forgotten,
                 original: ArrayRecord) -> dict[str, float]:
        parts = self.split(target, everything)
        self.model.load_state_dict(record_to_state(arrays))
        if self.task == "classification":
            return self._classification(parts)
        return self._regression(parts, original)

    def _classification(self, parts: dict) -> dict[str, float]:
        accuracy, confidence = {}, {}
        for name, (x, y) in parts.items():
            out = predict(self.model, x)
            accuracy[name] = float((out.argmax(1) == y).float().mean() * 100) if len(y) else float("nan")
            confidence[name] = F.softmax(out, dim=1).gather(1, y.view(-1, 1)).squeeze(1).numpy()
        return {"ua": 100 - accuracy["forgotten"], "ra": accuracy["retained"], "ta": accuracy["test"],
                "mia": mia_efficacy(confidence["retained"], confidence["test"], confidence["forgotten"], self.seed)}

    def _l1(self, x: torch.Tensor, y: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        return (predict(model or self.model, x).squeeze(-1) - y).abs()

    def _regression(self, parts: dict, original: ArrayRecord) -> dict[str, float]:
        losses = {name: self._l1(*xy) for name, xy in parts.items()}
        row = {f"{name}_l1": float(loss.mean()) for name, loss in losses.items()}
        row["mia"] = mia_efficacy(losses["retained"].numpy(), losses["test"].numpy(), losses["forgotten"].numpy(),
                                  self.seed)
        row["relearn_steps"] = self.relearn_steps(*parts["forgotten"], self._original_forgotten_loss(
            original, *parts["forgotten"]))
        return row

    def _original_forgotten_loss(self, original: ArrayRecord, x: torch.Tensor, y: torch.Tensor) -> float:
        if self._original_loss[0] is not original:
            model = copy.deepcopy(self.model)
            model.load_state_dict(record_to_state(original))
            self._original_loss = (original, float(self._l1(x, y, model).mean()))
        return self._original_loss[1]

    def relearn_steps(self, x: torch.Tensor, y: torch.Tensor, original_loss: float) -> int:
        """SGD steps on the forgotten data until its L1 is within 5% of the original model's (AIN's numerator
        or denominator); capped at RELEARN_MAX_STEPS."""
        model = copy.deepcopy(self.model)
        generator = torch.Generator().manual_seed(self.seed)
        goal = 1.05 * original_loss

        def loss_fn(idx: torch.Tensor) -> Step:
            loss = F.l1_loss(model(x[idx]).squeeze(-1), y[idx])
            return Step(loss, loss, len(idx))

        batches = (torch.randint(0, len(x), (min(self.batch_size, len(x)),), generator=generator)
                   for _ in range(RELEARN_MAX_STEPS))
        relearned = lambda: float(self._l1(x, y, model).mean()) <= goal
        return train_loop(model, batches, LocalTraining(lr=self.lr), loss_fn, stop=relearned).steps
