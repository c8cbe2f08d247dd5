"""The round callbacks every run uses (fedsim.callbacks), on their own: no federation."""

from __future__ import annotations

import random

from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fedsim.callbacks import SeededSampling
from fedsim.features.bags import LabelPrivacyLedger
from fedsim.runtime import InlineGrid


def sampled(callback: SeededSampling, server_round: int, phase: str, grid: InlineGrid) -> list[int]:
    callback.before_configure(server_round, phase)
    return sample_nodes(grid, 1, 4)[0]  # what Flower's FedAvg does right after configure is called


def test_seeded_sampling_depends_only_on_the_seed_round_and_phase():
    grid = InlineGrid(None, 20, {})
    first = sampled(SeededSampling(7), 3, "train", grid)
    random.random()  # other draws in between (resume, another runtime, earlier rounds) change nothing
    assert sampled(SeededSampling(7), 3, "train", grid) == first
    others = [sampled(SeededSampling(7), 4, "train", grid), sampled(SeededSampling(7), 3, "evaluate", grid),
              sampled(SeededSampling(8), 3, "train", grid)]
    assert all(o != first for o in others)


def test_the_label_privacy_ledger_adds_its_entry_to_every_row():
    ledger = LabelPrivacyLedger({"epsilon": 1.5, "mechanism": "laplace"})
    assert ledger.round_metrics(1) == ledger.round_metrics(9) == {"label_privacy": {"epsilon": 1.5,
                                                                                    "mechanism": "laplace"}}
