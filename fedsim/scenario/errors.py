"""Scenario errors a person can act on: every pydantic validation error of a scenario becomes one line naming
the field (and the kind, for sections with kinds), what is wrong and how to fix it."""

from __future__ import annotations

import re
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from fedsim.errors import ScenarioError, suggest
from fedsim.scenario.schema import BOOLEAN_NUMBER, ScenarioSchema, kind_tag

_KIND_LABEL = {"partitioner": "partitioner", "privacy": "privacy mode"}


def readable(exc: ValidationError, source: str, overrides: dict[str, Any], raw: dict[str, Any]) -> ScenarioError:
    """One ScenarioError for all of `exc`'s errors (the first, with the others in `also`)."""
    first, *rest = [_one(err, source, overrides, raw) for err in exc.errors(include_url=False)]
    first.also = rest
    return first


def _path(loc: tuple, raw: Any) -> tuple[list, dict[int, str]]:
    """The key path of `loc` in the scenario's tables, without the kind tags pydantic inserts for sections with
    kinds; and those kinds, by the depth of the section they select."""
    node, path, kinds = raw, [], {}
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node or isinstance(node, list) and isinstance(part,
                                                                                            int) and part < len(node):
            node = node[part]
        elif isinstance(part, str) and isinstance(node, dict) and (
                i < len(loc) - 1 or part in (node.get("name"), node.get("mode"))):  # not a key: the kind's tag
            kinds[len(path)] = part
            continue
        else:
            node = None
        path.append(part)
    return path, kinds


def _one(err: dict, source: str, overrides: dict[str, Any], raw: dict[str, Any]) -> ScenarioError:
    path, kinds = _path(err["loc"], raw)
    kind = err["type"]
    if kind == BOOLEAN_NUMBER:
        path = [*path, err["ctx"]["key"]]
        loc = ".".join(str(p) for p in path)
        where = f"--set {loc}" if loc in overrides else f"{source}: {loc}"
        return ScenarioError(where, err["msg"], "write a number (true / false are booleans)")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        path = [*path, err["ctx"]["discriminator"].strip("'")]
    loc = ".".join(str(p) for p in path)
    where = f"--set {loc}" if loc in overrides else (f"{source}: {loc}" if loc else source)
    if kind == "extra_forbidden":
        key, section = str(path[-1]), path[-2] if len(path) > 1 else ""
        owner = f" for {_KIND_LABEL.get(section, section)} '{kinds[len(path) - 1]}'" if len(path) - 1 in kinds else ""
        return ScenarioError(where, f"unknown key '{key}'{owner}", suggest(key, _allowed_keys(path[:-1], kinds)))
    if kind == "union_tag_invalid":
        tags = re.findall(r"'([^']+)'", err["ctx"]["expected_tags"])
        return ScenarioError(where, f"unknown {_KIND_LABEL.get(str(path[-2]), 'kind')} '{err['ctx']['tag']}'",
                             suggest(str(err["ctx"]["tag"]), tags))
    if kind == "union_tag_not_found":
        return ScenarioError(where, "missing", "set it to one of the kinds in the README's scenario table")
    if kind == "value_error":
        what, _, fix = str(err["ctx"]["error"]).partition("; ")
        return ScenarioError(where, what, fix or "fix this value")
    got = err.get("input")
    what = f"{err['msg'][0].lower()}{err['msg'][1:]} (got {got!r})" if not isinstance(got, dict) else err["msg"]
    fix = err["msg"].replace("Input should be", "use a value that is", 1) if "should be" in err["msg"] else "fix it"
    return ScenarioError(where, what, fix)


def _allowed_keys(path: list, kinds: dict[int, str]) -> list[str]:
    """The keys of the section at `path` (of the kind selected there, for sections with kinds)."""
    model: type[BaseModel] = ScenarioSchema
    for depth, part in enumerate(path):
        if isinstance(part, int) or part not in model.model_fields:  # a list index or a dict key
            continue
        annotation = model.model_fields[str(part)].annotation
        members = [a for a in _flatten(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        tag = kinds.get(depth + 1)
        model = next((m for m in members if tag is not None and kind_tag(m) == tag), members[0])
    return list(model.model_fields)


def _flatten(annotation: Any) -> list:
    args = get_args(annotation)
    return [a for arg in args for a in _flatten(arg)] if args else [annotation]

