"""Hostile scenario files: random and mutated TOML either loads (and then round-trips through to_toml) or raises
FedsimError whose every line names a place and offers a fix; valid mutations always load with the value set,
invalid ones never load."""

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


def assert_good_error(exc: FedsimError) -> None:
    """Every line of the error is one line that names where the problem is and says what to do."""
    for problem in [exc, *exc.also]:
        line = problem.line()
        assert "\n" not in line and problem.where and problem.what, line
        assert problem.fix, line


def assert_round_trips(scenario: Scenario, tmp_path) -> None:
    """What loaded is written back by to_toml() and loads again to the same scenario."""
    path = tmp_path / "again.toml"
    path.write_text(scenario.to_toml(), encoding="utf-8")
    again = Scenario.from_toml(path)
    assert again.to_dict() == scenario.to_dict() and again.to_toml() == scenario.to_toml()


def _load_text(tmp_path, text: str) -> Scenario | None:
    path = tmp_path / "s.toml"
    path.write_text(text, encoding="utf-8")
    try:
        scenario = Scenario.from_toml(path)
    except FedsimError as exc:
        assert_good_error(exc)
        return None
    assert_round_trips(scenario, tmp_path)
    return scenario


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
    except FedsimError as exc:
        assert_good_error(exc)


VALID = {  # key -> values that must load and be kept
    "run.rounds": st.integers(1, 10_000),
    "run.seed": st.integers(0, 2**31),
    "client.lr": st.floats(1e-6, 10.0),
    "client.momentum": st.floats(0.0, 0.99),
    "client.batch_size": st.integers(1, 4096),
    "client.local_epochs": st.integers(1, 50),
    "data.partitioner.alpha": st.floats(0.01, 100.0),
    "strategy.fraction_train": st.floats(0.01, 1.0),
}
INVALID = {  # key -> values that must never load
    "run.rounds": st.integers(-10**6, 0),
    "client.lr": st.floats(-10.0, 0.0),
    "client.momentum": st.floats(1.0, 10.0),
    "client.batch_size": st.integers(-100, 0),
    "data.partitioner.alpha": st.floats(-10.0, 0.0),
    "strategy.fraction_train": st.floats(1.0001, 100.0) | st.floats(-1.0, 0.0),
    "model.hidden": st.lists(st.integers(-5, 0), min_size=1, max_size=3),
    "run.roundz": st.integers(1, 5),
}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(VALID)).flatmap(lambda key: st.tuples(st.just(key), VALID[key])))
def test_valid_mutations_load_and_keep_their_value(tmp_path, mutation):
    key, value = mutation
    scenario = Scenario.load("quickstart", {key: value})
    node = scenario.to_dict()
    for part in key.split("."):
        node = node[part]
    assert node == value
    assert_round_trips(scenario, tmp_path)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(INVALID)).flatmap(lambda key: st.tuples(st.just(key), INVALID[key])))
def test_invalid_mutations_never_load(mutation):
    key, value = mutation
    try:
        Scenario.load("quickstart", {key: value})
    except FedsimError as exc:
        assert_good_error(exc)
        assert key.rsplit(".", 1)[0] in exc.where  # the error names the section (and key) it is about
    else:
        raise AssertionError(f"{key} = {value!r} loaded")
