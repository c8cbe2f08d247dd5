"""The features a scenario can switch on, each one module of this package holding everything it contributes
(fedsim.features.base.Feature): found by looking, so a new feature is its module, its schema entry and its docs."""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

from fedsim.errors import ScenarioError
from fedsim.features.base import ClientJob, ClientTrainingFeature, Feature, RoundSetup

if TYPE_CHECKING:
    from flwr.app import ConfigRecord

    from fedsim.scenario import Scenario

__all__ = ["ClientJob", "Feature", "RoundSetup", "all_features", "client_trainer", "enabled", "named"]


@functools.cache
def all_features() -> tuple[Feature, ...]:
    """Every feature (each module's FEATURE), in module-name order (the order of their rows' fields)."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name != "base":
            found.append(importlib.import_module(f"{__name__}.{info.name}").FEATURE)
    return tuple(found)


def named(name: str) -> Feature:
    return next(f for f in all_features() if f.name == name)


def enabled(scenario: Scenario) -> list[Feature]:
    """The features `scenario` switches on; at most one of them may train the clients."""
    on = [f for f in all_features() if f.enabled(scenario)]
    trainers = [f for f in on if isinstance(f, ClientTrainingFeature)]
    if len(trainers) > 1:
        names = " and ".join(f.name for f in trainers)
        raise ScenarioError(trainers[0].section, f"{names} each train the clients their own way and cannot be "
                            "combined in this version", f"keep one of [{'], ['.join(f.section for f in trainers)}]")
    return on


def client_trainer(config: ConfigRecord) -> tuple[ClientTrainingFeature, Any] | tuple[None, None]:
    """The feature whose settings a train config carries and those settings (None, None: plain local training)."""
    for feature in all_features():
        if isinstance(feature, ClientTrainingFeature):
            settings = feature.settings.from_config(config)
            if settings is not None:
                return feature, settings
    return None, None
