"""Sweeps: a base scenario run over a grid of overrides and several seeds, one run dir per combination.

A sweep file (TOML):
    base = "fedld-noniid"                     # shipped scenario name or path
    seeds = [0, 1, 2]
    [grid]                                    # every combination of these values
    "data.partitioner.alpha" = [0.1, 0.3, 1.0]
    strategy = [{name = "fedld"}, {name = "fedavg"}, {name = "fedprox", proximal_mu = 0.01}]
    [set]                                     # fixed overrides for every run
    "run.rounds" = 30
A table value sets several keys under its grid key. Each run is named <base name>-<label>, so
`fedsim compare` groups its seeds.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedsim.errors import ScenarioError, suggest
from fedsim.scenario import Scenario


class SweepFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: str
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    set: dict[str, Any] = Field(default_factory=dict)


def shipped_sweeps() -> dict[str, Path]:
    folder = resources.files("fedsim.scenarios").joinpath("sweeps")
    return {p.name[:-5]: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def load_sweep(name_or_path: str) -> tuple[SweepFile, Path]:
    path = Path(name_or_path)
    if not path.is_file():
        if name_or_path not in shipped_sweeps():
            raise ScenarioError(name_or_path, "no such sweep file or shipped sweep", suggest(name_or_path, shipped_sweeps()))
        path = shipped_sweeps()[name_or_path]
    try:
        return SweepFile.model_validate(tomllib.loads(path.read_text(encoding="utf-8"))), path
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(str(path), f"TOML syntax error: {exc}", "fix the TOML at that line") from None
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ScenarioError(f"{path}: {loc}", err["msg"], "see `fedsim sweep --help` for the sweep file format") from None


def _label(key: str, value: Any) -> str:
    if isinstance(value, dict):
        return "-".join(str(v) for v in value.values())
    field = key.rsplit(".", 1)[-1]
    return str(value) if field == "name" else f"{field}{value}"


def _overrides(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return {f"{key}.{k}": v for k, v in value.items()}
    return {key: value}


def expand(sweep: SweepFile) -> Iterator[tuple[str, int, Scenario]]:
    """(label, seed, scenario) for every grid combination and seed; all validated before anything runs."""
    base = Scenario.load(sweep.base, dict(sweep.set))
    keys = list(sweep.grid)
    for values in itertools.product(*(sweep.grid[k] for k in keys)):
        overrides: dict[str, Any] = {}
        for key, value in zip(keys, values):
            overrides.update(_overrides(key, value))
        label = "-".join(_label(k, v) for k, v in zip(keys, values)) or "base"
        overrides["run.name"] = f"{base.run.name}-{label}"
        for seed in sweep.seeds:
            yield label, seed, base.with_overrides({**overrides, "run.seed": seed})


def run_sweep(sweep: SweepFile, out: Path, on_run: Callable[[str, int, int, int], None] | None = None) -> list[Path]:
    """Run every combination into out/<label>-seed<k>; returns the run dirs."""
    from fedsim.runner import run

    plan = list(expand(sweep))
    dirs = []
    for index, (label, seed, scenario) in enumerate(plan):
        if on_run:
            on_run(label, seed, index, len(plan))
        dirs.append(run(scenario, out / f"{label}-seed{seed}").run_dir)
    return dirs
