"""Imports flow one way (docs/design.md, Layers): every fedsim module imports only from its own layer or those
below, and no chain of imports (lazy ones inside functions included) comes back to where it started."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"fedsim": "fedsim", "clients": "fedsim.clients", "strategies": "fedsim.strategies"}

# Longest matching prefix wins; a module not listed fails the test (put new modules in a layer). The package
# itself ("fedsim", its __init__) is matched exactly, never as a prefix, so it cannot place every module in layer 0.
PACKAGE = "fedsim"
LAYERS = {
    PACKAGE: 0, "fedsim.errors": 0, "fedsim._flower": 0, "fedsim.seeding": 0, "fedsim.files": 0, "fedsim.arrays": 0,
    "fedsim.reduction": 0, "fedsim.protocol": 0, "fedsim.privacy": 0, "fedsim.bag_theory": 0, "fedsim.checkpoint": 0,
    "fedsim.evaluation": 0, "fedsim.devices": 0, "fedsim.training": 0, "fedsim.run_lock": 0, "fedsim.stacked": 0,
          "fedsim.stacked_dp_sgd": 0, "fedsim.quiet": 0, "fedsim.inputs": 0, "fedsim.activations": 0,
    "fedsim.allocator": 0,
    "fedsim.strategies.registry": 1, "fedsim.strategies.fedld": 1, "fedsim.strategies.fedbn": 1,
    "fedsim.strategies.dp_fedavg": 1, "fedsim.strategies.grid_view": 1,
    "fedsim.strategies.early": 1,
    "fedsim.unlearning.methods": 1,
    "fedsim.loop": 1,
    "fedsim.scenario": 2,
    "fedsim.sources": 3, "fedsim.data": 3, "fedsim.models": 3, "fedsim.unlearning": 3, "fedsim.images": 3,
    "fedsim.example_data": 3, "fedsim.transforms": 3,
    "fedsim.clients": 4, "fedsim.strategies": 4, "fedsim.features": 4,
    "fedsim.runtime": 5,
    "fedsim.callbacks": 6, "fedsim.results": 6, "fedsim.server": 6,
    "fedsim.trackers": 6, "fedsim.report": 7,
    "fedsim.runner": 6, "fedsim.flower_app": 6,
    "fedsim.cli": 7, "fedsim.compare": 7, "fedsim.sweep": 7, "fedsim.plots": 7,
}


def installed_modules() -> dict[str, Path]:
    """Module name (as installed) -> source file, for every package folder."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The fedsim modules `path` imports anywhere in its body (`from pkg import module` counts the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in found if m in known and m != name}


def listed_prefix(module: str) -> str | None:
    """The longest entry of LAYERS that names `module` or a package above it (the root package only by name)."""
    found = [p for p in LAYERS if module == p or (p != PACKAGE and module.startswith(p + "."))]
    return max(found, key=len, default=None)


def layer(module: str) -> int:
    return LAYERS[listed_prefix(module)]


def graph() -> dict[str, set[str]]:
    modules = installed_modules()
    return {name: imports_of(path, name, set(modules)) for name, path in modules.items()}


def test_every_module_has_a_layer():
    assert [m for m in graph() if listed_prefix(m) is None] == []


def test_a_module_missing_from_the_layers_is_caught():
    assert listed_prefix("fedsim.brand_new_module") is None
    assert listed_prefix("fedsim") == PACKAGE and listed_prefix("fedsim.runtime.inline") == "fedsim.runtime"


def test_no_module_imports_a_layer_above_it():
    upward = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
              for m, deps in graph().items() for d in sorted(deps) if layer(d) > layer(m)]
    assert upward == []


def test_no_import_cycles():
    edges, cycles, state = graph(), [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(edges[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = "done"

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_the_checker_sees_imports():
    """The graph is not empty by accident: known edges are found."""
    edges = graph()
    assert "fedsim.protocol" in edges["fedsim.clients.app"] and "fedsim.loop" in edges["fedsim.server"]
