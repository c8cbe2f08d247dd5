"""Unlearning methods by name: one module per method, each with its server half, its client steps and what it
applies to (fedsim.unlearning.methods.base.Method). Adding a method is adding a module here that defines
`METHOD`; the scenario schema, the Unlearning wrapper, the ClientApp and the README's method table all read
this registry."""

from __future__ import annotations

import functools
import importlib
import pkgutil

from fedsim.unlearning.methods.base import KINDS, ClientStep, Method


@functools.cache
def methods() -> dict[str, Method]:
    """Every method, in listing order."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            found.append(importlib.import_module(f"{__name__}.{info.name}").METHOD)
    return {m.name: m for m in sorted(found, key=lambda m: (m.position, m.name))}


@functools.cache
def client_steps() -> dict[str, ClientStep]:
    """Client step name (the `method` of a `train.unlearn` message) -> the step."""
    return {name: step for m in methods().values() for name, step in m.client_steps.items()}


def fitting(task: str) -> list[str]:
    """The methods that fit `task` data, retrain first."""
    return [m.name for m in methods().values() if task in m.tasks]


def markdown_table() -> str:
    """The README's method table: name, requests and data it serves, what runs (the module's first paragraph)."""
    lines = ["| method | requests | data | what runs |", "|---|---|---|---|"]
    for m in methods().values():
        kinds = "any" if m.kinds == KINDS else ", ".join(sorted(m.kinds))
        tasks = "any" if len(m.tasks) == 2 else ", ".join(sorted(m.tasks))
        lines.append(f"| `{m.name}` | {kinds} | {tasks} | {m.summary} |")
    return "\n".join(lines)
