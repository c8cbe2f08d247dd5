"""Scenario files: the pydantic schema, TOML loading, `--set` overrides and readable errors."""

from __future__ import annotations

import copy
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedsim.errors import ScenarioError, suggest

EMBEDDED_DATASETS = {
    "digits": "8x8 handwritten digits, 10 classes (scikit-learn)",
    "breast_cancer": "Wisconsin breast cancer, 2 classes (scikit-learn)",
    "wine": "wine cultivars, 3 classes (scikit-learn)",
    "diabetes": "diabetes progression, regression (scikit-learn)",
    "leaf-synthetic": "Synthetic(alpha, beta) of the FedProx paper, one device per client",
    "gaussian-regression": "y = x.theta + noise, x ~ N(0, I_d)",
}
PARTITIONERS = (
    "iid", "dirichlet", "pathological", "shard", "size", "linear", "square", "exponential", "natural",
)
MODELS = ("linear", "mlp", "cnn")


def _one_of(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} '{value}'; {suggest(value, choices)}")
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ResourcesSection(Section):
    """Per virtual client, for the Ray runtime; num_cpus is also the torch thread count of a client."""

    num_cpus: float = Field(1, gt=0)
    num_gpus: float = Field(0, ge=0)
    max_actors: int | None = Field(None, ge=1)


class RunSection(Section):
    name: str = "fedsim"
    seed: int = 0
    rounds: int = Field(10, ge=1)
    runtime: Literal["inline", "ray", "flower"] = "inline"
    ray_address: str | None = None
    round_timeout_s: float | None = Field(None, gt=0)
    checkpoint_every: int = Field(1, ge=0)  # write RUN_DIR/checkpoint.pt every N rounds (0: never)
    resources: ResourcesSection = Field(default_factory=ResourcesSection)


class PartitionerSection(Section):
    name: str = "iid"
    num_partitions: int = Field(10, ge=1)
    alpha: float = Field(0.5, gt=0)
    min_partition_size: int = Field(10, ge=0)
    self_balancing: bool = False
    classes_per_partition: int = Field(2, ge=1)
    class_assignment: Literal["random", "deterministic", "first-deterministic"] = "random"
    shards_per_partition: int = Field(2, ge=1)
    shard_size: int | None = Field(None, ge=1)
    sizes: list[int] | None = None

    _known = field_validator("name")(lambda v: _one_of(v, PARTITIONERS, "partitioner"))


class FeatureSkewSection(Section):
    kind: Literal["noise", "affine"] = "noise"
    noise_std_max: float = Field(0.5, ge=0)
    scale_max: float = Field(0.5, ge=0, lt=1)
    shift_std: float = Field(0.5, ge=0)


class GeneratorSection(Section):
    """Parameters of the synthetic datasets (leaf-synthetic, gaussian-regression)."""

    n_samples: int = Field(2000, ge=2)
    n_features: int = Field(60, ge=1)
    noise_std: float = Field(1.0, ge=0)
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(1.0, ge=0)
    num_classes: int = Field(10, ge=2)


class DataSection(Section):
    dataset: str = "digits"
    test_fraction: float = Field(0.2, gt=0, lt=1)
    label_column: str = "label"
    feature_columns: list[str] | None = None
    data_files: str | None = None
    hf_subset: str | None = None
    hf_test_split: str = "test"
    partitioner: PartitionerSection = Field(default_factory=PartitionerSection)
    feature_skew: FeatureSkewSection | None = None
    generator: GeneratorSection = Field(default_factory=GeneratorSection)

    @field_validator("dataset")
    @classmethod
    def _known(cls, v: str) -> str:
        if v in EMBEDDED_DATASETS or v.startswith(("hf:", "file:")) and len(v.split(":", 1)[1]) > 0:
            return v
        raise ValueError(f"unknown dataset '{v}'; {suggest(v, [*EMBEDDED_DATASETS, 'hf:<name>', 'file:<path>'])}")


class ModelSection(Section):
    name: str = "mlp"
    hidden: list[int] = [64]
    channels: list[int] = [16, 32]
    batch_norm: bool = False  # cnn: BatchNorm2d after each convolution

    _known = field_validator("name")(lambda v: _one_of(v, MODELS, "model"))


class ClientSection(Section):
    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    proximal_mu: float = Field(0.0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    loss: Literal["ce", "fedld-margin"] = "ce"
    margin_lambda: float = Field(0.1, ge=0)
    margin_reduction: Literal["batch", "mean"] = "batch"


class StrategySection(BaseModel):
    """Flower strategy by name; keys other than the ones below are passed to its constructor."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str = "fedavg"
    fraction_train: float = Field(1.0, gt=0, le=1)
    fraction_evaluate: float = Field(0.0, ge=0, le=1)
    min_train_nodes: int | None = Field(None, ge=1)
    min_evaluate_nodes: int | None = Field(None, ge=0)
    min_available_nodes: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _known(self) -> StrategySection:
        from fedsim.strategies.registry import check_strategy  # flwr import kept off the schema's import path

        check_strategy(self.name, self.params)
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PrivacySection(Section):
    """Sample-level DP-SGD in clients (Opacus) or client-level DP-FedAvg on the server."""

    mode: Literal["dp-sgd", "client-dp"]
    noise_multiplier: float | None = Field(None, gt=0)
    target_epsilon: float | None = Field(None, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    accountant: Literal["rdp", "prv", "gdp"] = "rdp"
    max_grad_norm: float = Field(1.0, gt=0)  # dp-sgd: per-example clipping norm
    fix_model: bool = False  # dp-sgd: let Opacus's ModuleValidator.fix replace unsupported layers
    clipping_norm: float = Field(1.0, gt=0)  # client-dp: per-client update clipping norm
    q: float | None = Field(None, gt=0, le=1)  # client-dp: Poisson client sampling rate

    @model_validator(mode="after")
    def _complete(self) -> PrivacySection:
        if self.noise_multiplier is None and self.target_epsilon is None:
            raise ValueError("privacy needs noise_multiplier or target_epsilon; set one (or both: then "
                             "target_epsilon is a hard budget)")
        if self.mode == "client-dp" and self.q is None:
            raise ValueError("client-dp needs q, the client sampling rate; set privacy.q (e.g. 0.2)")
        return self


class BagsSection(Section):
    """Learning from aggregate responses: clients only see bag means / label proportions (docs/algorithms.md)."""

    k: int = Field(1, ge=1)
    rho: float = Field(0.0, ge=0, le=1)  # 0 bag-level, 1 instance-level, in between interpolating
    epsilon: float | None = Field(None, gt=0)  # Laplace label-DP of the released bag targets; omit for none
    clip: float = Field(1.0, gt=0)  # responses are clipped to [-B, B], B = clip * sqrt(log n)


class FaultsSection(Section):
    """Simulated unreliable clients, drawn per (seed, round, client): never answers, raises, or answers late."""

    dropout_rate: float = Field(0.0, ge=0, le=1)
    failure_rate: float = Field(0.0, ge=0, le=1)
    straggler_rate: float = Field(0.0, ge=0, le=1)
    straggler_delay_s: float = Field(1.0, ge=0)


def _unlearning_methods() -> dict:
    from fedsim.unlearning.methods import methods  # the registry; torch kept off the schema's import path

    return methods()


class UnlearningRequest(Section):
    """Forget a client, a class, or samples of one client, after round `at_round`; compare `method`s."""

    at_round: int = Field(ge=1)
    kind: Literal["client", "class", "samples"]
    target: int = Field(ge=0)  # client id (client, samples) or class label (class)
    samples: list[int] | None = None  # kind = "samples": indices into the client's partition
    method: list[str] = Field(default_factory=lambda: ["retrain"], min_length=1)

    @field_validator("method", mode="before")
    @classmethod
    def _listed(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _complete(self) -> UnlearningRequest:
        known = _unlearning_methods()
        for name in self.method:
            _one_of(name, tuple(known), "unlearning method")
        if len(set(self.method)) != len(self.method):
            raise ValueError("a method is listed twice; list each method once")
        if self.kind == "samples" and not self.samples:
            raise ValueError("kind 'samples' needs samples = [indices into the client's partition]; add them")
        if self.kind != "samples" and self.samples is not None:
            raise ValueError(f"samples is only for kind 'samples' (this request is kind '{self.kind}'); remove it")
        if self.samples is not None and len(set(self.samples)) != len(self.samples):
            raise ValueError("samples lists an index twice; list each index once")
        wrong = [m for m in self.method if self.kind not in known[m].kinds]
        if wrong:
            kinds = sorted(known[wrong[0]].kinds)
            raise ValueError(f"'{wrong[0]}' serves {' / '.join(kinds)} requests but this request is kind "
                             f"'{self.kind}'; use it with kind = '{kinds[0]}'")
        return self


class MethodSettings(Section):
    """Per-method overrides of the unlearning budget."""

    rounds: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)


class UnlearningSection(Section):
    """Requests, the history store, and the budget of the federated unlearning methods."""

    requests: list[UnlearningRequest] = Field(default_factory=list)
    history_interval: int = Field(1, ge=1)  # store global models + client updates every N rounds
    rounds: int = Field(2, ge=1)  # federated rounds of finetune / GA / RL / SalUn, post-PGA rounds
    epochs: int = Field(1, ge=1)  # local epochs per unlearning round
    lr: float | None = Field(None, gt=0)  # default: client.lr
    batch_size: int | None = Field(None, ge=1)  # default: client.batch_size
    salun_fraction: float = Field(0.5, gt=0, le=1)  # SalUn: share of weights in the saliency mask
    federaser_ratio: float = Field(0.5, gt=0, le=1)  # FedEraser: local epochs = ceil(ratio * client.local_epochs)
    pga_lr: float = Field(0.01, gt=0)
    pga_epochs: int = Field(5, ge=1)
    pga_clip: float = Field(5.0, gt=0)
    blindspot_beta: float = Field(50.0, ge=0)
    blindspot_epochs: int = Field(2, ge=1)
    evaluate: bool = True  # UA / RA / TA / MIA and the retrain reference for every request
    per_method: dict[str, MethodSettings] = Field(default_factory=dict)

    @field_validator("per_method")
    @classmethod
    def _methods(cls, v: dict[str, MethodSettings]) -> dict[str, MethodSettings]:
        for name in v:
            _one_of(name, tuple(_unlearning_methods()), "unlearning method")
        return v


class OutputSection(Section):
    dir: str = "runs"
    save_model: bool = True


class Scenario(Section):
    """A whole simulation: what to train, on which data, with which strategy, for how long."""

    run: RunSection = Field(default_factory=RunSection)
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    client: ClientSection = Field(default_factory=ClientSection)
    strategy: StrategySection = Field(default_factory=StrategySection)
    output: OutputSection = Field(default_factory=OutputSection)
    privacy: PrivacySection | None = None
    bags: BagsSection | None = None
    faults: FaultsSection | None = None
    unlearning: UnlearningSection | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        n = self.data.partitioner.num_partitions
        for key in ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes"):
            value = getattr(self.strategy, key)
            if value is not None and value > n:
                raise ValueError(
                    f"strategy.{key} = {value} exceeds data.partitioner.num_partitions = {n} "
                    f"(the round would wait forever); use at most {n}"
                )
        for i, request in enumerate(self.unlearning.requests if self.unlearning else []):
            if request.at_round >= self.run.rounds:
                raise ValueError(f"unlearning.requests.{i}.at_round = {request.at_round} is not before the run's "
                                 f"last round ({self.run.rounds}); requests are served after round at_round, "
                                 f"so use at most {self.run.rounds - 1}")
            if request.kind != "class" and request.target >= n:
                raise ValueError(f"unlearning.requests.{i}.target: there is no client {request.target} "
                                 f"(clients are 0..{n - 1}); use a client id below {n}")
        return self

    # ---- loading -------------------------------------------------------------------------
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
        return cls.from_dict(raw, source=str(path), overrides=overrides)

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], source: str = "scenario", overrides: list[str] | dict[str, Any] | None = None
    ) -> Scenario:
        override_map = parse_overrides(overrides)
        raw = apply_overrides(raw, override_map)
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise _readable(exc, source, override_map) from None

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

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> Scenario:
        return Scenario.from_dict(self.to_dict(), source="scenario", overrides=overrides)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


# ---- overrides ---------------------------------------------------------------------------
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


# ---- errors ------------------------------------------------------------------------------
def _readable(exc: ValidationError, source: str, overrides: dict[str, Any]) -> ScenarioError:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    where = f"--set {loc}" if loc in overrides else (f"{source}: {loc}" if loc else source)
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(err["loc"][:-1])
        return ScenarioError(where, f"unknown key '{err['loc'][-1]}'", suggest(str(err["loc"][-1]), allowed))
    if kind == "value_error":
        what, _, fix = str(err["ctx"]["error"]).partition("; ")
        return ScenarioError(where, what, fix or "fix this value")
    got = err.get("input")
    what = f"{err['msg'][0].lower()}{err['msg'][1:]} (got {got!r})" if not isinstance(got, dict) else err["msg"]
    fix = err["msg"].replace("Input should be", "use a value that is", 1) if "should be" in err["msg"] else "fix it"
    return ScenarioError(where, what, fix)


def _allowed_keys(path: tuple) -> list[str]:
    model: type[BaseModel] = Scenario
    for part in path:
        if isinstance(part, int) or part not in model.model_fields:  # a list index or a dict key
            continue
        annotation = model.model_fields[str(part)].annotation
        model = next(a for a in getattr(annotation, "__args__", (annotation,))
                     if isinstance(a, type) and issubclass(a, BaseModel))
    return list(model.model_fields)


# ---- shipped scenarios -------------------------------------------------------------------
def shipped_scenarios() -> dict[str, Path]:
    folder = resources.files("fedsim.scenarios")
    return {p.name[:-5]: Path(str(p)) for p in sorted(folder.iterdir(), key=lambda p: p.name) if p.name.endswith(".toml")}


def describe(path: Path) -> str:
    """The first comment line of a scenario file: its one-line description."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""
