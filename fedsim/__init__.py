"""fedsim: federated-learning and privacy simulation on Flower."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["FedsimError", "RunResult", "Scenario", "load_run", "resume", "run"]

_EXPORTS = {
    "Scenario": "fedsim.scenario",
    "FedsimError": "fedsim.errors",
    "run": "fedsim.runner",
    "resume": "fedsim.runner",
    "RunResult": "fedsim.results",
    "load_run": "fedsim.results",
}


def __getattr__(name: str) -> Any:  # lazy, so `import fedsim` stays cheap
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fedsim' has no attribute {name!r}")
