"""`--set` overrides: dotted keys with TOML literal values, applied to a scenario's raw tables."""

from __future__ import annotations

import copy
import tomllib
from typing import Any

from fedsim.errors import ScenarioError


def parse_overrides(overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """`["a.b=1", ...]` or `{"a.b": 1}` -> `{"a.b": 1}`; string values are read as TOML literals."""
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    parsed = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ScenarioError(f"--set {item}", "expected KEY=VALUE", "write e.g. --set run.rounds=5")
        parsed[key.strip()] = _literal(value.strip())
    return parsed


def _literal(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _section(node: dict | list, part: str, dotted: str) -> dict:
    """The table `part` of `node`; in a list of tables (unlearning.requests) `part` is an index."""
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise ScenarioError(f"--set {dotted}", f"'{part}' is not an entry of a list of {len(node)}",
                                f"use an index below {len(node)}")
        child = node[int(part)]
    else:
        child = node.setdefault(part, {})
    if not isinstance(child, dict | list) or (isinstance(child, list) and not all(isinstance(c, dict) for c in child)):
        raise ScenarioError(f"--set {dotted}", f"'{part}' is a value, not a section", "check the key path")
    return child


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys; a number after a list of tables picks an entry (unlearning.requests.0.at_round)."""
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = _section(node, part, dotted)
        if isinstance(node, list):
            raise ScenarioError(f"--set {dotted}", "a list of tables needs an entry index",
                                f"use {dotted}.0.<key>, or set the whole list as an inline TOML array")
        node[leaf] = value
    return out


