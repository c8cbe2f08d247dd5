"""Loading scenarios: `Scenario` (the schema plus loading from TOML, dicts and overrides) and the catalog of
shipped scenarios."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedsim.errors import ScenarioError, suggest
from fedsim.scenario.errors import readable
from fedsim.scenario.overrides import apply_overrides, parse_overrides
from fedsim.scenario.schema import PartitionerSection, PrivacySection, ScenarioSchema, kinds


class Scenario(ScenarioSchema):
    """A whole simulation: what to train, on which data, with which strategy, for how long."""

    @classmethod
    def from_toml(cls, path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> Scenario:
        path = Path(path)
        if not path.is_file():
            raise ScenarioError(str(path), "file not found", "check the path or run `fedsim list`")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ScenarioError(str(path), f"TOML syntax error: {exc}", "fix the TOML at that line") from None
        except UnicodeDecodeError:
            raise ScenarioError(str(path), "not a UTF-8 text file", "pass a TOML scenario file") from None
        if not raw:
            raise ScenarioError(str(path), "empty scenario (no section, no setting): it would run every default",
                                "start from a shipped one, e.g. `fedsim list`, or write at least [run] and [data]")
        return cls.from_dict(raw, source=str(path), overrides=overrides).next_to(path.parent)

    def next_to(self, folder: Path) -> Scenario:
        """Model files are looked for next to the scenario file first: its folder becomes model.factory_path, and
        a relative model.init found there its absolute path."""
        model = self.model
        if model.factory is not None and model.factory_path is None:
            model.factory_path = str(folder.resolve())
        if model.init is not None and not Path(model.init).is_absolute() and (folder / model.init).is_file():
            model.init = str((folder / model.init).resolve())
        return self

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], source: str = "scenario", overrides: list[str] | dict[str, Any] | None = None
    ) -> Scenario:
        """Validate `raw` (with `overrides` applied); a ScenarioError reports every problem, not only the first."""
        override_map = parse_overrides(overrides)
        raw = _one_model(raw, override_map)
        raw = apply_overrides(raw, override_map)
        for section, (tag, _) in _KINDS.items():  # an override that changes the kind drops the old kind's keys
            if f"{section}.{tag}" in override_map:
                _keep_own_keys(raw, section, {k.rpartition(".")[2] for k in override_map
                                              if k.rpartition(".")[0] == section})
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise readable(exc, source, override_map, raw) from None

    @classmethod
    def load(cls, name_or_path: str, overrides: list[str] | dict[str, Any] | None = None) -> Scenario:
        """A scenario file path, or the name of a shipped scenario (`fedsim list`)."""
        path = Path(name_or_path)
        if not path.exists() and name_or_path in shipped_scenarios():
            path = shipped_scenarios()[name_or_path]
        elif not path.exists():
            names = list(shipped_scenarios())
            raise ScenarioError(name_or_path, "no such file or shipped scenario", suggest(name_or_path, names))
        return cls.from_toml(path, overrides)

    @classmethod
    def from_run_dir(cls, path: str | Path) -> Scenario:
        """A run dir's scenario.toml. Run dirs written before sections had kinds list every partitioner and
        privacy key; the keys another kind owns are dropped (they had their defaults and no effect)."""
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            return cls.from_toml(path)  # the same file read again, for its one-line error
        for section in _KINDS:
            _keep_own_keys(raw, section)
        return cls.from_dict(raw, source=str(path))

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> Scenario:
        return Scenario.from_dict(self.to_dict(), source="scenario", overrides=overrides)


def _one_model(raw: dict[str, Any], override_map: dict[str, Any]) -> dict[str, Any]:
    """An override naming the model (model.name or model.factory) replaces the file's other way of naming it."""
    model = raw.get("model")
    if not isinstance(model, dict):
        return raw
    if "model.factory" in override_map and "model.name" not in override_map:
        model = {k: v for k, v in model.items() if k != "name"}
    elif "model.name" in override_map and "model.factory" not in override_map:
        model = {k: v for k, v in model.items() if k not in ("factory", "args", "factory_path")}
    return {**raw, "model": model}


_KINDS = {"data.partitioner": ("name", PartitionerSection), "privacy": ("mode", PrivacySection)}


def _keep_own_keys(raw: dict[str, Any], section: str, keep: set[str] = frozenset()) -> None:
    """Drop the keys of table `section` that its kind does not have (except those in `keep`)."""
    tag, union = _KINDS[section]
    *parents, leaf = section.split(".")
    table = raw
    for part in parents:
        table = table.get(part) if isinstance(table, dict) else None
    values = table.get(leaf) if isinstance(table, dict) else None
    if not isinstance(values, dict):
        return
    kind = kinds(union).get(values.get(tag, "iid"))
    if kind is not None:
        table[leaf] = {k: v for k, v in values.items() if k in kind.model_fields or k in keep}


def shipped_scenarios() -> dict[str, Path]:
    folder = resources.files("fedsim.scenarios")
    return {p.name[:-5]: Path(str(p)) for p in sorted(folder.iterdir(),
                                                      key=lambda p: p.name) if p.name.endswith(".toml")}


def describe(path: Path) -> str:
    """The first comment line of a scenario file: its one-line description."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""
