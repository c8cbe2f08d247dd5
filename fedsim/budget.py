"""Server side of privacy: the ledger written with every round, and a hard budget that is never exceeded.

DP-SGD: clients report their epsilon and what one more round would cost; a client whose next round would exceed
`target_epsilon` is retired (no longer sampled), and the run stops when too few clients remain. Client-level DP:
the run stops before the round that would exceed the budget.
"""

from __future__ import annotations

from flwr.app import Message

from fedsim import protocol
from fedsim.loop import RoundCallback
from fedsim.privacy import Ledger, epsilon_of
from fedsim.scenario import PrivacySection


class PrivacyMonitor(RoundCallback):
    """Keeps the privacy ledger (a `privacy` entry in every round's row) and enforces `target_epsilon` by
    retiring clients or stopping the run. `needed`: the fewest clients a round can run with; `uncovered`: what
    the run releases beyond what epsilon covers (privacy.report_uncovered)."""

    def __init__(self, privacy: PrivacySection, grid, noise_multiplier: float | None = None, needed: int = 1,
                 uncovered: list[str] | None = None) -> None:
        self.privacy, self.grid, self.needed = privacy, grid, needed
        self.uncovered = list(uncovered or [])  # released but not covered by epsilon (listed in the ledger)
        self.noise_multiplier = noise_multiplier  # client-dp: the server's noise multiplier
        self.clients: dict[int, dict] = {}  # dp-sgd: latest report per node
        self.retired: set[int] = set()
        self.rounds = 0
        self.stop_reason: str | None = None

    # ---- ledger ------------------------------------------------------------------------------------------
    def ledger(self) -> dict:
        p = self.privacy
        if p.mode == "client-dp":
            history = [(self.noise_multiplier, p.q, self.rounds)] if self.rounds else []
            entry = Ledger(epsilon_of(history, p.delta, p.accountant), p.delta, p.accountant,
                           self.noise_multiplier, p.q, self.rounds).to_dict()
        elif self.clients:
            worst = max(self.clients.values(), key=lambda c: c[protocol.EPSILON])
            entry = Ledger(worst[protocol.EPSILON], p.delta, p.accountant, worst[protocol.NOISE_MULTIPLIER],
                           worst[protocol.SAMPLE_RATE], int(worst[protocol.STEPS])).to_dict()
        else:
            entry = Ledger(0.0, p.delta, p.accountant, p.noise_multiplier or 0.0, 0.0, 0).to_dict()
        entry.update(mode=p.mode, target_epsilon=p.target_epsilon, retired_clients=len(self.retired))
        if self.uncovered:
            entry["uncovered"] = self.uncovered
        return entry

    # ---- round hooks ---------------------------------------------------------------------------------------
    def before_round(self, server_round: int) -> str | None:
        """Client-level DP: stop before the round that would exceed the target; DP-SGD: stop once too few
        clients with budget left remain (decided from the previous round's replies)."""
        p = self.privacy
        if p.mode == "client-dp" and p.target_epsilon is not None:
            after = epsilon_of([(self.noise_multiplier, p.q, server_round)], p.delta, p.accountant)
            if after > p.target_epsilon:
                self.stop_reason = (f"privacy budget: round {server_round} would reach epsilon {after:.3f} > "
                                    f"target {p.target_epsilon}")
        return self.stop_reason

    def on_train_replies(self, server_round: int, replies: list[Message]) -> None:
        self.rounds = server_round
        if self.privacy.mode == "dp-sgd":
            for msg in replies:
                self._observe(msg)
            if len(self.grid.get_node_ids()) < self.needed:
                self.stop_reason = (f"privacy budget: {len(self.retired)} clients have spent their budget and "
                                    f"fewer than {self.needed} remain")

    def round_metrics(self, server_round: int) -> dict:
        return {"privacy": self.ledger()}

    def _observe(self, msg: Message) -> None:
        node = msg.metadata.src_node_id
        if msg.has_error():
            if protocol.EXHAUSTED in (msg.error.reason or ""):
                self._retire(node)
            return
        metrics = next(iter(msg.content.metric_records.values()), {})
        if protocol.EPSILON not in metrics:
            return
        self.clients[node] = {k: metrics[k] for k in protocol.DP_REPORT}
        target = self.privacy.target_epsilon
        if target is not None and metrics[protocol.EPSILON_NEXT] > target:
            self._retire(node)

    def _retire(self, node: int) -> None:
        self.retired.add(node)
        if hasattr(self.grid, "retire"):
            self.grid.retire(node)
