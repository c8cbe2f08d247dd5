"""Where FedLD's revised update points: per round, the cosine between FedLD's aggregated update and the plain mean
of the client updates (fedld-noniid at Dirichlet(0.1)), and FedLD vs FedAvg with 5 clients as in the paper's setup.

    python benchmarks/fedld_direction.py        # the figures in the README's FedLD section
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

import fedsim
from fedsim.arrays import state_to_record
from fedsim.loop import RoundCallback
from fedsim.server import prepare


class CosineToMean(RoundCallback):
    """Cosine between each round's global update and the mean of the clients' updates (all entries together)."""

    def __init__(self, initial: dict[str, np.ndarray]) -> None:
        self.sent, self.mean, self.cosines = initial, None, []

    def on_train_replies(self, server_round, replies):
        updates = [{k: m.content["arrays"][k].numpy() - v for k, v in self.sent.items()} for m in replies
                   if not m.has_error()]
        self.mean = np.concatenate([np.mean([u[k] for u in updates], axis=0).ravel() for k in self.sent])

    def after_round(self, server_round, arrays, row, stopping):
        new = {k: a.numpy() for k, a in arrays.items()}
        delta = np.concatenate([(new[k] - self.sent[k]).ravel() for k in new])
        self.cosines.append(float(delta @ self.mean / (np.linalg.norm(delta) * np.linalg.norm(self.mean))))
        self.sent = new


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        scenario = fedsim.Scenario.load("fedld-noniid", ["data.partitioner.alpha=0.1"])
        initial = {k: v.numpy() for k, v in state_to_record(prepare(scenario).model.state_dict()).items()}
        cosine = CosineToMean(initial)
        result = fedsim.run(scenario, out=Path(tmp) / "alpha01", callbacks=[cosine])
        later = cosine.cosines[1:]  # round 1 is the plain mean by definition
        print(f"alpha 0.1, 20 clients: cosine of FedLD's update to the mean, rounds 2-{len(cosine.cosines)}: "
              f"{min(later):.2f}-{max(later):.2f} (median {np.median(later):.2f}); "
              f"final accuracy {result.final['accuracy']:.3f}")
        for name in ("fedld", "fedavg"):
            five = fedsim.run(fedsim.Scenario.load("fedld-noniid", ["data.partitioner.num_partitions=5",
                                                                    f"strategy.name={name}"]),
                              out=Path(tmp) / f"five-{name}")
            print(f"alpha 0.3, 5 clients: {name} final accuracy {five.final['accuracy']:.3f}")


if __name__ == "__main__":
    main()
