"""The history store: global models and client updates of every `interval`-th round, on disk.

Layout: <dir>/round-00001/global.pt (the model sent in that round) and client-<id>.pt (that client's update,
its model minus the global, plus its example count). Files are plain tensor dicts, read with weights_only=True.

Forgetting a client deletes its files, and for every round t it took part in the global model stored for round
t + 1: that model is round t's aggregate, from which (with round t's global and the other clients' updates and
counts) the forgotten update is one equation away. What remains is the first stored global model and the other
clients' updates (all FedEraser needs); those updates were computed from models the forgotten client influenced.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from fedsim.files import load_tensors, save_tensors, storage

State = dict[str, torch.Tensor]


class HistoryStore:
    def __init__(self, directory: str | Path, interval: int = 1) -> None:
        self.dir, self.interval = Path(directory), interval

    def due(self, server_round: int) -> bool:
        """Rounds 1, 1 + interval, 1 + 2 interval, ... are stored."""
        return (server_round - 1) % self.interval == 0

    def _round_dir(self, server_round: int) -> Path:
        return self.dir / f"round-{server_round:05d}"

    def save(self, server_round: int, global_state: State, updates: dict[int, tuple[State, int]]) -> None:
        """Store round `server_round`: the global model sent and each client's (update, num_examples)."""
        folder = self._round_dir(server_round)
        with storage(folder):
            folder.mkdir(parents=True, exist_ok=True)
        save_tensors(global_state, folder / "global.pt")
        for pid, (update, num_examples) in updates.items():
            save_tensors({"update": update, "num_examples": torch.tensor(num_examples)}, folder / f"client-{pid}.pt")

    def rounds(self) -> list[int]:
        """Stored rounds (a round may have lost its global model to a forgotten client: `has_global`)."""
        if not self.dir.is_dir():
            return []
        return sorted(int(p.name.split("-")[1]) for p in self.dir.glob("round-*") if p.is_dir() and any(p.iterdir()))

    def has_global(self, server_round: int) -> bool:
        return (self._round_dir(server_round) / "global.pt").is_file()

    @staticmethod
    def _load(path: Path) -> dict:
        return load_tensors(path, "history file", "the history store is damaged; re-run the scenario")

    def global_model(self, server_round: int) -> State:
        return self._load(self._round_dir(server_round) / "global.pt")

    def updates(self, server_round: int) -> dict[int, tuple[State, int]]:
        """{client id: (update, num_examples)} stored for `server_round`."""
        out = {}
        for path in sorted(self._round_dir(server_round).glob("client-*.pt")):
            entry = self._load(path)
            out[int(re.findall(r"\d+", path.stem)[0])] = (entry["update"], int(entry["num_examples"]))
        return out

    def forget_client(self, pid: int, served_after: int) -> int:
        """Delete every stored update of client `pid` and the global model stored right after each round it took
        part in up to `served_after` (the round its request was served after: the model stored for the next
        round is the unlearned one, not an aggregate with its update); returns how many files were removed."""
        updates = list(self.dir.glob(f"round-*/client-{pid}.pt"))
        took_part = [int(p.parent.name.split("-")[1]) for p in updates]
        after = [self._round_dir(t + 1) / "global.pt" for t in took_part if t < served_after]
        files = updates + [p for p in after if p.is_file()]
        for path in files:
            path.unlink()
        return len(files)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.rglob("*.pt")) if self.dir.is_dir() else 0
