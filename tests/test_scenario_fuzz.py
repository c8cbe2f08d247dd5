"""Hostile scenario files: random and mutated TOML either loads or raises FedsimError, never anything else."""

from __future__ import annotations

import tomllib

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsim.errors import FedsimError
from fedsim.scenario import Scenario, shipped_scenarios

QUICKSTART = tomllib.loads(shipped_scenarios()["quickstart"].read_text())
SECTIONS = ["run", "data", "model", "client", "strategy", "output", "privacy", "bags", "data.partitioner"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.lists(st.integers(-5, 5), max_size=3))


def _load_text(tmp_path, text: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text, encoding="utf-8")
    try:
        Scenario.from_toml(path)
    except FedsimError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_random_text(tmp_path, text):
    _load_text(tmp_path, text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(SECTIONS), st.text(min_size=1, max_size=15), scalars)
def test_mutated_quickstart(tmp_path, section, key, value):
    doc = {k: dict(v) if isinstance(v, dict) else v for k, v in QUICKSTART.items()}
    node = doc
    for part in section.split("."):
        node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
    node[key] = value
    try:
        text = tomli_w.dumps({k: v for k, v in doc.items() if v is not None})
    except (TypeError, ValueError):  # None values and the like have no TOML form
        return
    _load_text(tmp_path, text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.text(max_size=8), st.one_of(scalars, st.dictionaries(st.text(max_size=8), scalars)),
                       max_size=5))
def test_random_documents(tmp_path, doc):
    try:
        text = tomli_w.dumps({k: v for k, v in doc.items() if v is not None})
    except (TypeError, ValueError):
        return
    _load_text(tmp_path, text)


UNLEARN = tomllib.loads(shipped_scenarios()["unlearn-client"].read_text())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["unlearning", "request"]), st.sampled_from(
    ["at_round", "kind", "target", "samples", "method", "history_interval", "rounds", "per_method", "lr", "x"]),
    st.one_of(scalars, st.lists(st.text(max_size=8), max_size=3), st.dictionaries(st.text(max_size=8), scalars)))
def test_mutated_unlearning_requests(tmp_path, where, key, value):
    doc = tomllib.loads(tomli_w.dumps(UNLEARN))
    node = doc["unlearning"] if where == "unlearning" else doc["unlearning"]["requests"][0]
    node[key] = value
    try:
        text = tomli_w.dumps(doc)
    except (TypeError, ValueError):
        return
    _load_text(tmp_path, text)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["unlearning", "requests", "0", "1", "-1", "at_round", "method", "run", "rounds", ""]),
                min_size=1, max_size=5), scalars)
def test_overrides_into_lists_of_tables(path, value):
    try:
        Scenario.load("unlearn-client", {".".join(path): value})
    except FedsimError:
        pass
