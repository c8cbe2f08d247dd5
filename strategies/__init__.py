"""fedsim's server-side strategies: FedLD, Poisson-sampled DP-FedAvg, the Unlearning wrapper, and the registry
of strategies by name (Flower's own plus FedLD). Exports load on first use, so importing one module (e.g. the
registry, which the scenario schema asks) does not import the others."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FedLD": "fedsim.strategies.fedld",
    "PoissonDPFedAvg": "fedsim.strategies.dp_fedavg",
    "Unlearning": "fedsim.strategies.unlearning",
    "STRATEGIES": "fedsim.strategies.registry",
    "build_strategy": "fedsim.strategies.registry",
    "check_strategy": "fedsim.strategies.registry",
    "strategy_params": "fedsim.strategies.registry",
}
__all__ = ["STRATEGIES", "FedLD", "PoissonDPFedAvg", "Unlearning", "build_strategy", "check_strategy",
           "strategy_params"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fedsim.strategies' has no attribute {name!r}")
