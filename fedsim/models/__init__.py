"""The run's model: a built-in by `[model] name` (fedsim.models.small, .resnet, .leaf), your own by
`[model] factory` (fedsim.models.factory), or an object given to `fedsim.run(model=...)` (`GivenModel`).

fedsim keeps every example flat (prod(input_shape) numbers), so every model it trains takes flat batches: the
built-ins reshape them themselves, and a factory's or a given model gets a forward pre-hook (`Unflatten`) that
reshapes them to (batch, *input_shape) before its own forward. `check_model` pushes one batch through a model
before round 1 so that a model that does not fit the data stops the run with one line.
"""

from __future__ import annotations

import base64
import copy
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fedsim.errors import ScenarioError
from fedsim.models import factory as user_factory
from fedsim.models.leaf import CharLSTM, FemnistCNN
from fedsim.models.resnet import DEPTHS, ResNet
from fedsim.models.small import ConvNet, SmallCNN, linear, mlp
from fedsim.scenario import ModelSection
from fedsim.sources import SourceInfo

IMAGE_MODELS = ("cnn", "convnet", "femnist-cnn", *DEPTHS)


class Unflatten:
    """Forward pre-hook: flat batches (n, prod(shape)) become (n, *shape); batches already shaped pass."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(shape)

    def __call__(self, module: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        if len(self.shape) > 1 and x.dim() == 2:
            return (x.view(-1, *self.shape), *args[1:])
        return None


@dataclass
class GivenModel:
    """A model given to `fedsim.run(model=...)`: an nn.Module (a copy of it, weights included, is the initial
    global model) or a zero-argument callable that returns one. Clients rebuild its architecture from `encoded`
    (cloudpickle: a module travels as a meta-device copy, its weights come with each round's global model)."""

    module: nn.Module | None = None
    build: Callable[[], nn.Module] | None = None

    @classmethod
    def of(cls, model: nn.Module | Callable[[], nn.Module]) -> GivenModel:
        if isinstance(model, nn.Module):
            return cls(module=model)
        if callable(model):
            return cls(build=model)
        raise ScenarioError("model", f"fedsim.run(model=...) got a {type(model).__name__}",
                            "pass an nn.Module or a zero-argument callable that returns one")

    def architecture(self) -> nn.Module:
        if self.module is not None:
            return copy.deepcopy(self.module)
        return user_factory.call(self.build, {}, "model", getattr(self.build, "__name__", "the model callable"))

    def encoded(self) -> str:
        if self.module is None:
            return _pickled(self.build, self.build)
        persistent = set(self.module.state_dict())
        whole = any(name not in persistent for name, _ in self.module.named_buffers())  # would not survive meta
        blueprint = copy.deepcopy(self.module).cpu() if whole else copy.deepcopy(self.module).to("meta")
        return _pickled(blueprint, type(self.module))


def _pickled(obj: object, defined: object) -> str:
    """cloudpickle of `obj`; the code of `defined`'s module travels by value unless it is installed (a script's
    or a notebook's classes are not importable on Ray's workers)."""
    import cloudpickle

    module = sys.modules.get(getattr(defined, "__module__", "") or "")
    file = getattr(module, "__file__", None)
    own = module is not None and module.__name__ != "__main__" and file is not None and \
        "site-packages" not in Path(file).parts and not module.__name__.startswith(("fedsim", "torch"))
    if own:
        cloudpickle.register_pickle_by_value(module)
    try:
        return base64.b64encode(cloudpickle.dumps(obj)).decode()
    finally:
        if own:
            cloudpickle.unregister_pickle_by_value(module)


def decode(encoded: str) -> Callable[[], nn.Module]:
    """The architecture builder a client gets from GivenModel.encoded."""
    import cloudpickle

    obj = cloudpickle.loads(base64.b64decode(encoded))
    if isinstance(obj, nn.Module):
        return lambda: copy.deepcopy(obj).to_empty(device="cpu") if _on_meta(obj) else copy.deepcopy(obj)
    return obj


def _on_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def build_model(cfg: ModelSection, info: SourceInfo, given: Callable[[], nn.Module] | None = None) -> nn.Module:
    """A fresh model for `info`'s inputs (one output per class, or one for regression), taking flat batches."""
    model = _build(cfg, info, given)
    if info.pipeline is not None:  # image data: the pipeline decodes and transforms every raw batch
        model.register_forward_pre_hook(info.pipeline)
    elif given is not None or cfg.factory is not None:
        model.register_forward_pre_hook(Unflatten(info.input_shape))
    return model


def _build(cfg: ModelSection, info: SourceInfo, given: Callable[[], nn.Module] | None) -> nn.Module:
    outputs = info.num_classes or 1
    if given is not None:
        return given()
    if cfg.factory is not None:
        return user_factory.build(cfg.factory, cfg.args, info.input_shape, outputs, cfg.factory_path)
    inputs = math.prod(info.input_shape)
    if cfg.name == "linear":
        return linear(inputs, outputs)
    if cfg.name == "mlp":
        return mlp(inputs, cfg.hidden, outputs)
    if cfg.name == "char-lstm":
        return CharLSTM(outputs)
    if len(info.input_shape) != 3:
        raise ScenarioError("model.name", f"'{cfg.name}' needs image inputs but the data has shape "
                            f"{info.input_shape}", "use model.name = 'mlp' or 'linear'")
    if cfg.name == "convnet":
        return ConvNet(info.input_shape, cfg.channels, cfg.hidden, outputs)
    if cfg.name == "femnist-cnn":
        return FemnistCNN(info.input_shape, outputs)
    if cfg.name in DEPTHS:
        return ResNet(cfg.name, info.input_shape, outputs, cfg.stem or "cifar", cfg.norm or "batch")
    return SmallCNN(info.input_shape, cfg.channels, outputs, cfg.batch_norm)


def fresh_model(cfg: ModelSection, info: SourceInfo, seed: int, given: GivenModel | None = None) -> nn.Module:
    """A model initialised from `seed` (every runtime builds the same one); a given module is re-initialised by
    its layers' own `reset_parameters`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if given is None:
            return build_model(cfg, info)
        model = build_model(cfg, info, given.architecture)
        if given.module is not None:
            for module in model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        return model


def initial_model(cfg: ModelSection, info: SourceInfo, seed: int, given: GivenModel | None = None) -> nn.Module:
    """The run's initial global model: seeded (or the given module's weights), then `model.init`'s weights."""
    if given is not None and given.module is not None:
        model = build_model(cfg, info, given.architecture)
    else:
        model = fresh_model(cfg, info, seed, given)
    if cfg.init is not None:
        load_weights(model, cfg.init)
    return model


def load_weights(model: nn.Module, path: str) -> None:
    """Load a state_dict file (`weights_only`: no code runs); keys and shapes must match the model's."""
    file = Path(path)
    if not file.is_file():
        raise ScenarioError("model.init", f"no file '{path}'", "give the path of a state_dict saved with torch.save")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt or pickled-code file
        raise ScenarioError("model.init", f"cannot load '{path}' as weights: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0]}", "save it with torch.save(model.state_dict(), path)") \
            from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a training checkpoint's usual layout
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ScenarioError("model.init", f"'{path}' holds a {type(state).__name__}, not a state_dict",
                            "save it with torch.save(model.state_dict(), path)")
    problems = mismatch(model.state_dict(), state)
    if problems:
        raise ScenarioError("model.init", f"'{path}' does not fit the model: {problems}",
                            "save the weights of the same architecture (or fix model.name / model.args)")
    model.load_state_dict(state)


def mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], limit: int = 3) -> str:
    """What differs between two state dicts' keys and shapes ('' when they fit)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} {tuple(found[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in found and tuple(found[k].shape) != tuple(v.shape)]
    parts = [f"{what} {', '.join(keys[:limit])}{f' (+{len(keys) - limit} more)' if len(keys) > limit else ''}"
             for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if keys]
    return ", ".join(parts)


NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)  # BatchNorm*, InstanceNorm*, GroupNorm, ...


def norm_keys(model: nn.Module) -> list[str]:
    """The state-dict keys of the model's normalisation layers (parameters and running statistics)."""
    return [f"{name}.{key}" if name else key for name, module in model.named_modules() if isinstance(module, NORMS)
            for key in module.state_dict(keep_vars=True)]


def describe_model(model: nn.Module, given: bool) -> dict:
    """What a run built, for its run dir: the class, the parameter count, whether fedsim.run was given it."""
    return {"class": f"{type(model).__module__}.{type(model).__qualname__}",
            "parameters": sum(p.numel() for p in model.parameters()), "given": given}


def check_model(model: nn.Module, info: SourceInfo, sample: torch.Tensor, where: str = "model.factory") -> None:
    """Push one batch (`sample`, two examples) through the model: it must run and give one output per class
    (classification) or one number per example, shaped (batch, 1) (regression)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(sample)
    except Exception as exc:  # noqa: BLE001 - the model's forward is the user's code
        raise ScenarioError(where, f"the model fails on a batch of shape {tuple(sample.shape)} (inputs "
                            f"{info.input_shape}): {type(exc).__name__}: {str(exc).splitlines()[0]}",
                            "make it accept (batch, *input_shape) inputs") from None
    finally:
        model.train(was_training)
    expected = (len(sample), info.num_classes) if info.num_classes else (len(sample), 1)
    shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
    if shape != expected:
        what = f"{info.num_classes} classes" if info.num_classes else "regression (one number per example)"
        raise ScenarioError(where, f"the model's output is {shape} for a batch of {len(sample)}, but the task is "
                            f"{what}: expected {expected}", f"make it give {expected[1]} output(s) per example (a "
                            "factory may name num_outputs to get it; torchvision's take num_classes in [model.args])")
