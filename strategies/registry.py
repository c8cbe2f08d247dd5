"""Strategies by name: Flower's own classes, configured (never rewritten), plus fedsim's FedLD.

`STRATEGIES` is the registry scenario files name strategies from; a `[strategy]` section's parameters are checked
against the class's constructor when the scenario loads. Nothing here depends on the scenario schema (the schema
asks this module), so the registry sits below it (docs/design.md, Layers).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from flwr.serverapp import strategy as flower

from fedsim import protocol
from fedsim.errors import suggest
from fedsim.strategies.fedbn import FedBN
from fedsim.strategies.fedld import FedLD

STRATEGIES: dict[str, type[flower.Strategy]] = {
    "fedavg": flower.FedAvg,
    "fedprox": flower.FedProx,
    "fedadam": flower.FedAdam,
    "fedyogi": flower.FedYogi,
    "fedadagrad": flower.FedAdagrad,
    "fedavgm": flower.FedAvgM,
    "fedmedian": flower.FedMedian,
    "fedtrimmedavg": flower.FedTrimmedAvg,
    "krum": flower.Krum,
    "qfedavg": flower.QFedAvg,
    "fedld": FedLD,
    "fedbn": FedBN,
}

# Constructor arguments fedsim sets itself (from other scenario sections); not user parameters.
_MANAGED = {
    "fraction_train", "fraction_evaluate", "min_train_nodes", "min_evaluate_nodes", "min_available_nodes",
    "weighted_by_key", "arrayrecord_key", "configrecord_key", "train_metrics_aggr_fn", "evaluate_metrics_aggr_fn",
}


def strategy_params(name: str) -> list[str]:
    """The user-settable constructor parameters of strategy `name`."""
    params = inspect.signature(STRATEGIES[name].__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.name not in _MANAGED and p.kind is not p.VAR_KEYWORD]


# Step sizes and adaptivity constants that only make sense above 0; moment decays that must stay below 1.
_POSITIVE = {"eta", "eta_l", "tau", "server_learning_rate", "client_learning_rate", "server_lr", "k_proportion"}
_BELOW_ONE = {"beta_1", "beta_2", "history_decay"}


def check_strategy(name: str, params: dict[str, Any]) -> None:
    """Raise ValueError('what; fix') for an unknown strategy or parameter, a value of the wrong type (checked
    against the constructor's annotation), or a number out of range: never inf or nan, step sizes > 0, moment
    decays in [0, 1), and no negative value where the default is a non-negative number."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy '{name}'; {suggest(name, STRATEGIES)}")
    allowed = strategy_params(name)
    signature = inspect.signature(STRATEGIES[name].__init__, eval_str=True).parameters
    for key, value in params.items():
        if key not in allowed:
            choices = allowed or ["(none)"]
            raise ValueError(f"strategy '{name}' has no parameter '{key}'; {suggest(key, choices)}")
        _check_value(name, key, value, signature[key])


def _check_value(name: str, key: str, value: Any, param: inspect.Parameter) -> None:
    from pydantic import TypeAdapter, ValidationError

    where = key
    if param.annotation is not param.empty:
        try:
            TypeAdapter(param.annotation).validate_python(value, strict=True)
        except ValidationError as exc:
            expected = getattr(param.annotation, "__name__", str(param.annotation))
            reason = exc.errors()[0]["msg"].lower()
            raise ValueError(f"{where} = {value!r}: {reason} ('{name}' takes a {expected}); "
                             f"write a {expected}, e.g. {param.default!r}" if param.default is not param.empty
                             else f"write a {expected}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    default = param.default if isinstance(param.default, int | float) else None
    if not math.isfinite(value):
        raise ValueError(f"{where} = {value}: must be a finite number; use e.g. {default}" if default is not None
                         else f"{where} = {value}: must be a finite number; write a finite number")
    if key in _POSITIVE and value <= 0:
        raise ValueError(f"{where} = {value}: must be greater than 0; use a positive value"
                         + (f", e.g. {default}" if default else ""))
    if key in _BELOW_ONE and not 0 <= value < 1:
        raise ValueError(f"{where} = {value}: must be in [0, 1); use e.g. {default}")
    if default is not None and default >= 0 and value < 0:
        raise ValueError(f"{where} = {value}: must not be negative; use e.g. {default}")


def build_strategy(
    name: str,
    params: dict[str, Any],
    *,
    fraction_train: float,
    fraction_evaluate: float,
    min_train_nodes: int,
    min_evaluate_nodes: int,
    min_available_nodes: int,
    defaults: dict[str, Any] | None = None,
) -> flower.Strategy:
    """Instantiate strategy `name`; `defaults` fill parameters the user did not set (if the class takes them)."""
    check_strategy(name, params)
    allowed = strategy_params(name)
    kwargs = {k: v for k, v in (defaults or {}).items() if k in allowed}
    kwargs.update(params)
    if name == "qfedavg":
        kwargs.setdefault("train_loss_key", protocol.TRAIN_LOSS)
    try:
        return STRATEGIES[name](
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            **kwargs,
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"strategy '{name}' rejected its parameters: {exc}; check [strategy]") from None
