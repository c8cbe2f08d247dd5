"""Client-level DP (`privacy.mode = "client-dp"`), the whole feature: DP-FedAvg with Poisson client sampling on the
server (fedsim.strategies.dp_fedavg.PoissonDPFedAvg), its noise multiplier (given, or the smallest that fits the
budget for every round), and the ledger that stops the run before the round that would exceed target_epsilon.
Clients train as usual; only what they report is restricted (privacy.report_uncovered)."""

from __future__ import annotations

from fedsim.errors import ScenarioError
from fedsim.features.base import PrivacyFeature, ledger_entry, uncovered
from fedsim.loop import RoundCallback
from fedsim.privacy import Ledger, epsilon_of, noise_multiplier
from fedsim.strategies.dp_fedavg import PoissonDPFedAvg


def client_dp_noise(scenario) -> float:
    """The server's noise multiplier: given, or the smallest that fits the budget for all `run.rounds` rounds."""
    p = scenario.privacy
    if p.noise_multiplier is not None:
        return p.noise_multiplier
    return noise_multiplier(p.target_epsilon, p.q, scenario.run.rounds, p.delta, p.accountant)


class ClientDPLedger(RoundCallback):
    """The ledger of a client-level DP run (one subsampled Gaussian release per round, accounted at rate q) and its
    hard budget: the run stops before the round that would take epsilon past target_epsilon."""

    def __init__(self, privacy, noise: float, released: list[str]) -> None:
        self.privacy, self.noise_multiplier, self.uncovered = privacy, noise, released
        self.rounds = 0
        self.stop_reason: str | None = None

    def before_round(self, server_round: int) -> str | None:
        p = self.privacy
        if p.target_epsilon is not None and self.stop_reason is None:
            after = epsilon_of([(self.noise_multiplier, p.q, server_round)], p.delta, p.accountant)
            if after > p.target_epsilon:
                self.stop_reason = (f"privacy budget: round {server_round} would reach epsilon {after:.3f} > "
                                    f"target {p.target_epsilon}")
        return self.stop_reason

    def on_train_replies(self, server_round: int, replies) -> None:
        self.rounds = server_round

    def round_metrics(self, server_round: int) -> dict:
        p = self.privacy
        history = [(self.noise_multiplier, p.q, self.rounds)] if self.rounds else []
        ledger = Ledger(epsilon_of(history, p.delta, p.accountant), p.delta, p.accountant, self.noise_multiplier,
                        p.q, self.rounds)
        return {"privacy": ledger_entry(p, ledger, 0, self.uncovered)}


def _mechanism(strategy: PoissonDPFedAvg) -> tuple[float, float, float]:
    return strategy.noise_multiplier, strategy.clipping_norm, strategy.sample_rate


class ClientDP(PrivacyFeature):
    name, mode = "client-dp", "client-dp"

    def check(self, scenario, data, model):
        s = scenario.strategy
        if s.name != "fedavg" or s.params:
            raise ScenarioError("strategy.name", f"{self.mode} runs DP-FedAvg (Poisson sampling, clipping, noise)",
                                "set strategy.name = 'fedavg' without extra parameters")
        return model

    def strategy(self, scenario, given):
        """Its DP-FedAvg; a strategy passed to fedsim.run only if it is that very mechanism (the ledger accounts it)."""
        own = self.private_strategy(scenario)
        if given is not None and not (type(given) is type(own) and _mechanism(given) == _mechanism(own)):
            raise ScenarioError("privacy.mode", f"'{self.mode}' runs its own DP-FedAvg, so the strategy passed to "
                                "fedsim.run would not be private", "leave out strategy=, or remove [privacy]")
        return given or own

    def private_strategy(self, scenario) -> PoissonDPFedAvg:
        s, p = scenario.strategy, scenario.privacy
        evaluate = s.node_minimums(scenario.data.partitioner.num_partitions)["min_evaluate_nodes"]
        return PoissonDPFedAvg(noise_multiplier=client_dp_noise(scenario), clipping_norm=p.clipping_norm,
                               sample_rate=p.q, seed=scenario.run.seed, fraction_evaluate=s.fraction_evaluate,
                               min_evaluate_nodes=evaluate, min_available_nodes=1)

    def callbacks(self, scenario, grid, needed: int) -> list[RoundCallback]:
        return [ClientDPLedger(scenario.privacy, client_dp_noise(scenario), uncovered(scenario))]


FEATURE = ClientDP()
