"""Differential-privacy accounting with Opacus's accountants: epsilon for a mechanism, noise for a budget.

Every epsilon fedsim prints comes from here: a subsampled Gaussian mechanism (noise multiplier sigma, Poisson
sampling rate q) composed over `steps`, accounted by Opacus's RDP, PRV or GDP accountant. `history` is Opacus's own
format, a list of (noise_multiplier, sample_rate, steps) segments, so composition across rounds with different
settings is exact.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from fedsim.errors import FedsimError

ACCOUNTANTS = ("rdp", "prv", "gdp")
BUDGET_ACCOUNTANTS = ("rdp", "prv")  # upper bounds on epsilon; GDP is a central-limit estimate that can fall below
GDP_NO_BUDGET = ("'gdp' is a central-limit estimate of epsilon, not an upper bound (it can be exceeded), so it "
                 "cannot hold a target epsilon; use accountant = 'rdp' or 'prv' for a budget, or give "
                 "noise_multiplier alone to report a GDP estimate")
History = list[tuple[float, float, int]]


def check(where: str, *, epsilon: float | None = None, delta: float | None = None,
          noise_multiplier: float | None = None, sample_rate: float | None = None, steps: int | None = None,
          accountant: str | None = None) -> None:
    """Raise a one-line FedsimError for a value outside its domain."""
    if epsilon is not None and not epsilon > 0:
        raise FedsimError(f"{where}epsilon", f"must be > 0 (got {epsilon})", "pass a positive epsilon")
    if delta is not None and not 0 < delta < 1:
        raise FedsimError(f"{where}delta", f"must be in (0, 1) (got {delta})", "use e.g. 1e-5 (below 1/n)")
    if noise_multiplier is not None and not noise_multiplier > 0:
        raise FedsimError(f"{where}noise_multiplier", f"must be > 0 (got {noise_multiplier})",
                          "pass a positive noise multiplier")
    if sample_rate is not None and not 0 < sample_rate <= 1:
        raise FedsimError(f"{where}sample_rate", f"must be in (0, 1] (got {sample_rate})", "use a rate like 0.01")
    if steps is not None and steps < 1:
        raise FedsimError(f"{where}steps", f"must be >= 1 (got {steps})", "pass a positive number of steps")
    if accountant is not None and accountant not in ACCOUNTANTS:
        raise FedsimError(f"{where}accountant", f"unknown accountant '{accountant}'",
                          f"choose from: {', '.join(ACCOUNTANTS)}")


def _accountant(name: str, history: History):
    from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant

    accountant = {"rdp": RDPAccountant, "prv": PRVAccountant, "gdp": GaussianAccountant}[name]()
    accountant.history = [(float(s), float(q), int(t)) for s, q, t in history]
    return accountant


@functools.lru_cache(maxsize=256)
def _rdp_per_step(noise: float, rate: float) -> np.ndarray:
    """Opacus's RDP of one step at its default orders; RDP composes additively, so steps just multiply it."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    return np.asarray(analysis.compute_rdp(q=rate, noise_multiplier=noise, steps=1,
                                           orders=RDPAccountant.DEFAULT_ALPHAS))


def epsilon_of(history: History, delta: float, accountant: str = "rdp") -> float:
    """Epsilon spent by a composition of subsampled Gaussian mechanisms (0 for an empty history).

    RDP is Opacus's own computation with each (noise, rate) pair's per-step RDP cached, since clients ask after
    every round; PRV and GDP go through Opacus's accountants as they are.
    """
    if not history:
        return 0.0
    if accountant == "rdp":
        from opacus.accountants import RDPAccountant
        from opacus.accountants.analysis import rdp as analysis

        rdp = sum(int(t) * _rdp_per_step(float(s), float(q)) for s, q, t in history)
        with warnings.catch_warnings():  # best order at an edge of Opacus's orders: a valid, looser bound (docs)
            warnings.simplefilter("ignore")
            return float(analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)[0])
    with warnings.catch_warnings():  # GDP warns that it is an approximation; the docs say so
        warnings.simplefilter("ignore")
        return float(_accountant(accountant, history).get_epsilon(delta))


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    check("", noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta,
          accountant=accountant)
    return epsilon_of([(noise_multiplier, sample_rate, steps)], delta, accountant)


@functools.lru_cache(maxsize=1024)
def noise_multiplier(target_epsilon: float, sample_rate: float, steps: int, delta: float,
                     accountant: str = "rdp") -> float:
    """The smallest noise multiplier whose epsilon after `steps` stays within `target_epsilon` (Opacus's search),
    by an accountant that bounds epsilon from above (RDP or PRV). Cached: clients of equal size share one search
    (~0.6 s each) instead of repeating it."""
    check("", epsilon=target_epsilon, sample_rate=sample_rate, steps=steps, delta=delta, accountant=accountant)
    if accountant not in BUDGET_ACCOUNTANTS:
        what, _, fix = GDP_NO_BUDGET.partition("; ")
        raise FedsimError("accountant", what, fix)
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                              sample_rate=sample_rate, steps=steps, accountant=accountant))
        except ValueError as exc:
            raise FedsimError("target_epsilon", f"no noise multiplier reaches it: {exc}",
                              "raise the target epsilon or lower steps / sample rate") from None


@dataclass(frozen=True)
class Ledger:
    """What a privacy guarantee rests on; written to every metrics row and to summary.json."""

    epsilon: float
    delta: float
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int

    def to_dict(self) -> dict:
        return asdict(self)
