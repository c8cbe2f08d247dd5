"""Round callbacks every fedsim run uses (fedsim.loop.RoundCallback): seeded sampling, checkpoints, the
unlearning bookkeeping, and the small per-round ledgers. The metrics recorder (fedsim.results.RunRecorder) and
each feature's callbacks (privacy ledgers and budgets: fedsim.features) are callbacks too, in their own modules."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord

from fedsim import checkpoint
from fedsim._flower import seed_sampling
from fedsim.loop import Phase, RoundCallback
from fedsim.seeding import derive_seed
from fedsim.strategies.unlearning import Unlearning

if TYPE_CHECKING:
    import torch

_PHASES = {"train": 0, "evaluate": 1}


class SeededSampling(RoundCallback):
    """Flower's strategies sample nodes with the module-level `random`: seed it from (seed, round, phase)
    right before each configure step, so sampling depends on nothing else (resume, runtime, earlier draws)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def before_configure(self, server_round: int, phase: Phase) -> None:
        seed_sampling(derive_seed(self.seed, server_round, _PHASES[phase]))


class Checkpointer(RoundCallback):
    """Writes RUN_DIR/checkpoint.pt every `every` rounds and when the run is stopping (Ctrl-C, SIGTERM: on disk
    before the run ends). A round's checkpoint is written on a background thread (checkpoint.BackgroundWriter) while
    the next round's clients train; that round waits for it before it aggregates, so a failed write stops the run
    there (its last good checkpoint intact, no row past it). `wait()`: the last one is on disk.

    `stateful` are the objects whose state a resumed run needs (the strategy, the privacy monitor, ...): their
    `checkpoint_state()` or, failing that, their encodable attributes (fedsim.checkpoint.object_state). `read`
    gives a round's global model as a state dict: the server's own read of it (fedsim.arrays.StateReader), so the
    model central evaluation parsed is not parsed again.
    """

    def __init__(self, run_dir: Path, every: int, scenario_toml: str, grid, stateful: dict[str, Any],
                 initial_metrics: Callable[[], dict], read: Callable[[ArrayRecord], dict[str, torch.Tensor]]
                 ) -> None:
        self.run_dir, self.every, self.scenario_toml, self.grid = run_dir, every, scenario_toml, grid
        self.stateful, self.initial_metrics, self.read = stateful, initial_metrics, read
        self.writer = checkpoint.BackgroundWriter()

    def after_round(self, server_round: int, arrays: ArrayRecord, row: dict, stopping: bool) -> None:
        if stopping or (self.every and server_round % self.every == 0):
            self.writer.write(self.run_dir, {
                "round": server_round, "arrays": checkpoint.encode_arrays(self.read(arrays)),
                "initial": checkpoint.encode(self.initial_metrics()), "scenario": self.scenario_toml,
                **{name: checkpoint.object_state(obj) if obj is not None else None
                   for name, obj in self.stateful.items()},
                "grid": self.grid.checkpoint_state(), "rng": checkpoint.rng_state()})
            if stopping:
                self.writer.wait()

    def on_train_replies(self, server_round: int, replies) -> None:
        self.wait()

    def wait(self, raise_error: bool = True) -> None:
        """Until the last checkpoint is on disk (raising its write's error, with `raise_error`)."""
        self.writer.wait(raise_error)

    def close(self, raise_error: bool = True) -> None:
        """wait(), and the writer's thread ends."""
        self.writer.close(raise_error)

    def restore(self, state: dict) -> None:
        """Put every stateful object, the Grid and the random generators back as the checkpoint has them."""
        for name, obj in self.stateful.items():
            if obj is not None:
                checkpoint.restore_object(obj, state[name])
        self.grid.restore_checkpoint(state["grid"])
        checkpoint.restore_rng(state["rng"])


class UnlearningRecords(RoundCallback):
    """Deletes forgotten clients' stored updates after each round (once its checkpoint is on disk: `checkpointed`
    waits for it, so a resumed run can serve the request again) and adds the unlearning table and the history
    store's size to summary.json."""

    def __init__(self, strategy: Unlearning, checkpointed: Callable[[], None] = lambda: None) -> None:
        self.strategy, self.checkpointed = strategy, checkpointed

    def after_round(self, server_round: int, arrays: ArrayRecord, row: dict, stopping: bool) -> None:
        if self.strategy.forgotten.clients:
            self.checkpointed()
        self.strategy.purge()

    def on_run_end(self) -> dict:
        store = self.strategy.store
        return {"unlearning": self.strategy.results,
                "history": {"interval": store.interval, "rounds": len(store.rounds()), "bytes": store.size_bytes()}}


class StopOnDivergence(RoundCallback):
    """run.stop_on_nan: ends the run after the first round whose training or central-evaluation numbers are not
    finite (a diverged model only spreads nan from there on); `found` says where."""

    def __init__(self) -> None:
        self.found: tuple[int, str, float] | None = None  # (round, "train/loss", value)

    def after_round(self, server_round: int, arrays: ArrayRecord, row: dict, stopping: bool) -> str | None:
        for part in ("train", "eval"):
            for key, value in sorted(row.get(part, {}).items()):
                if isinstance(value, float) and not math.isfinite(value):
                    self.found = (server_round, f"{part}/{key}", value)
                    return f"training diverged: {part}/{key} is {value}"
        return None


class FaultCounts(RoundCallback):
    """Adds the faults the Grid injected this round (dropped, failed, straggled) to the round's row."""

    def __init__(self, grid) -> None:
        self.grid = grid

    def round_metrics(self, server_round: int) -> dict:
        return {"faults": self.grid.take_fault_counts()}
