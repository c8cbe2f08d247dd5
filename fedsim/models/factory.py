"""Your own model: `[model] factory = "package.module:callable"` with `[model.args]` as keyword arguments.

The module is looked for in `model.factory_path` (the scenario file's folder) first, then the working directory,
then `sys.path`, so `torchvision.models:resnet50` and a `my_models.py` next to the scenario both work. A callable
that names an `input_shape` or `num_outputs` parameter gets them from the data (`num_outputs`: the classes, or 1
for regression) unless `[model.args]` sets them. Every failure is one line naming `model.factory` or `model.args`.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path

from torch import nn

from fedsim.errors import ScenarioError

FILLED = ("input_shape", "num_outputs")  # parameters fedsim fills from the data when the callable names them


def search_path(factory_path: str | None) -> list[str]:
    """Where a factory's module is looked for before sys.path: its folder, then the working directory."""
    return [str(Path(p).resolve()) for p in (factory_path, os.getcwd()) if p]


def resolve(factory: str, factory_path: str | None = None) -> Callable:
    """The callable `factory` names ("module:attribute", the attribute may be dotted)."""
    module_name, sep, attribute = factory.partition(":")
    if not sep or not module_name or not attribute:
        raise ScenarioError("model.factory", f"'{factory}' is not 'module:callable'",
                            "write it as package.module:callable, e.g. torchvision.models:resnet50")
    for folder in reversed(search_path(factory_path)):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        target = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - the user's module: any failure to import is theirs to fix
        raise ScenarioError("model.factory", f"cannot import '{module_name}': {type(exc).__name__}: {exc}",
                            "put the module next to the scenario file, in the working directory, or install "
                            "it") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ScenarioError("model.factory", f"module '{module_name}' has no '{attribute}'",
                                f"check the name after the colon ({module_name}.py defines it?)")
        target = getattr(target, part)
    if not callable(target):
        raise ScenarioError("model.factory", f"'{factory}' is a {type(target).__name__}, not a callable",
                            "name a function or class that returns an nn.Module")
    return target


def arguments(fn: Callable, args: dict, input_shape: tuple[int, ...], num_outputs: int) -> dict:
    """`args` plus the data's input_shape / num_outputs where `fn` names them; checked against fn's signature."""
    kwargs = dict(args)
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none: pass args as they are
        return kwargs
    filled = {"input_shape": tuple(input_shape), "num_outputs": num_outputs}
    for name in FILLED:
        if name in signature.parameters and name not in kwargs:
            kwargs[name] = filled[name]
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise ScenarioError("model.args", f"{getattr(fn, '__name__', fn)}{signature} cannot take "
                            f"{sorted(kwargs)}: {exc}", "set [model.args] to the callable's keyword arguments") \
            from None
    return kwargs


def build(factory: str, args: dict, input_shape: tuple[int, ...], num_outputs: int,
          factory_path: str | None = None) -> nn.Module:
    """Call the factory; its result must be an nn.Module."""
    fn = resolve(factory, factory_path)
    kwargs = arguments(fn, args, input_shape, num_outputs)
    return call(fn, kwargs, "model.factory", factory)


def call(fn: Callable, kwargs: dict, key: str, label: str) -> nn.Module:
    """`fn(**kwargs)`, which must return an nn.Module; a failure is one line naming `key`."""
    try:
        model = fn(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's code
        raise ScenarioError(key, f"{label}(**{kwargs}) raised {type(exc).__name__}: {exc}",
                            "fix the model code or [model.args]") from None
    if not isinstance(model, nn.Module):
        raise ScenarioError(key, f"{label} returned a {type(model).__name__}, not a torch nn.Module",
                            "return an nn.Module (e.g. the model instance)")
    return model


def local_module(factory: str, factory_path: str | None = None) -> Path | None:
    """The file (or package folder) of the factory's top-level module when it comes from the scenario's folder or
    the working directory rather than an installed package: what a Ray cluster's workers need shipped."""
    resolve(factory, factory_path)
    top_name = factory.partition(":")[0].split(".")[0]
    if top_name == "fedsim":  # shipped with fedsim's own code
        return None
    top = sys.modules[top_name]
    file = Path(getattr(top, "__file__", "") or "").resolve()
    if not file.is_file():
        return None
    source = file.parent if file.name == "__init__.py" else file
    return source if any(source.parent == Path(folder) for folder in search_path(factory_path)) else None
