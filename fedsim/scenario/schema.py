"""The scenario schema: one pydantic model per section, each key with its type, range and default.

Sections with kinds (`data.partitioner` by `name`, `privacy` by `mode`) are discriminated unions: each kind has
only its own keys. Names that registries own (strategies, unlearning methods) are checked by asking them.
Loading files, overrides and error messages are fedsim.scenario.loading, .overrides and .errors.
"""

from __future__ import annotations

import dataclasses
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator
from pydantic_core import PydanticCustomError

from fedsim.errors import suggest
from fedsim.protocol import LocalTraining

EMBEDDED_DATASETS = {
    "digits": "8x8 handwritten digits, 10 classes (scikit-learn)",
    "breast_cancer": "Wisconsin breast cancer, 2 classes (scikit-learn)",
    "wine": "wine cultivars, 3 classes (scikit-learn)",
    "diabetes": "diabetes progression, regression (scikit-learn)",
    "leaf-synthetic": "Synthetic(alpha, beta) of the FedProx paper, one device per client",
    "gaussian-regression": "y = x.theta + noise, x ~ N(0, I_d)",
    "synthetic-images": "CIFAR-10-shaped 3x32x32 images: a smooth pattern per class plus noise (seeded)",
}
# a hub dataset, a table, a folder of class folders of images, a CSV of image names and labels
SOURCE_PREFIXES = {"hf:": "hf:<name>", "file:": "file:<path>", "folder:": "folder:<path>",
                   "images:": "images:<labels.csv>"}
IMAGE_SOURCES = ("folder:", "images:")
MODELS = ("linear", "mlp", "cnn", "convnet", "resnet18", "resnet34", "resnet50", "femnist-cnn", "char-lstm")


def _one_of(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} '{value}'; {suggest(value, choices)}")
    return value


BOOLEAN_NUMBER = "boolean_number"  # the error type of `rounds = true` (fedsim.scenario.errors names the key)


def _numbers_only(annotation: Any) -> bool:
    """Whether a field's type is int / float (optionally None) and nothing else: no bool among them."""
    args = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    args = [a for a in args if a is not type(None)]
    return bool(args) and all(a in (int, float) for a in args)


class _NoBooleanNumbers(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _no_boolean_numbers(cls, data: Any) -> Any:
        """pydantic reads true as 1 for a number; `rounds = true` is a mistake, not one round."""
        for key, value in data.items() if isinstance(data, dict) else ():
            field = cls.model_fields.get(key)
            if isinstance(value, bool) and field is not None and _numbers_only(field.annotation):
                raise PydanticCustomError(BOOLEAN_NUMBER, "a number is needed, not the boolean {value}",
                                          {"key": key, "value": str(value).lower()})
        return data


class Section(_NoBooleanNumbers):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True,  # 1 -> 1.0 for floats
                              allow_inf_nan=False)  # inf, -inf and nan are never a setting


class ResourcesSection(Section):
    """Per virtual client, for the Ray runtime; num_cpus is also the torch thread count of a client."""

    num_cpus: float = Field(1, gt=0)
    num_gpus: float = Field(0, ge=0)
    max_actors: int | None = Field(None, ge=1)
    vectorize_memory_mb: float = Field(1024, gt=0)  # bound on one vectorised chunk's parameters + activations


class RunSection(Section):
    name: str = "fedsim"
    seed: int = Field(0, ge=0, le=2**32 - 1)  # every stream is derived from its 32 bits (fedsim.seeding)
    rounds: int = Field(10, ge=1)
    runtime: Literal["inline", "ray", "flower"] = "inline"
    ray_address: str | None = None
    ray_connect_timeout_s: float = Field(30.0, gt=0)  # give up attaching to ray_address after this long
    round_timeout_s: float | None = Field(None, gt=0)
    checkpoint_every: int = Field(1, ge=0)  # write RUN_DIR/checkpoint.pt every N rounds (0: never)
    # "auto": train a round's clients together (fedsim.stacked) where it applies and pays off
    vectorize: Literal["auto"] | bool = "auto"
    # clients trained together send one partial result per cohort where the strategy allows it (fedsim.reduction)
    reduce_early: bool = True
    stop_on_nan: bool = True  # a round whose loss or metrics are not finite ends the run with an error
    resources: ResourcesSection = Field(default_factory=ResourcesSection)


class _Partitioner(Section):
    num_partitions: int = Field(10, ge=1)


class IidPartitioner(_Partitioner):
    name: Literal["iid"] = "iid"


class DirichletPartitioner(_Partitioner):
    """Label skew: class proportions per partition drawn from Dirichlet(alpha)."""

    name: Literal["dirichlet"]
    alpha: float = Field(0.5, gt=0)
    min_partition_size: int = Field(10, ge=0)
    self_balancing: bool = False


class PathologicalPartitioner(_Partitioner):
    """Each partition holds examples of `classes_per_partition` classes only."""

    name: Literal["pathological"]
    classes_per_partition: int = Field(2, ge=1)
    class_assignment: Literal["random", "deterministic", "first-deterministic"] = "random"


class ShardPartitioner(_Partitioner):
    """Sorted-by-label shards, `shards_per_partition` each (or shards of `shard_size`)."""

    name: Literal["shard"]
    shards_per_partition: int = Field(2, ge=1)
    shard_size: int | None = Field(None, ge=1)


class SizePartitioner(_Partitioner):
    """Partitions of the given sizes."""

    name: Literal["size"]
    sizes: list[int] | None = None


class LinearPartitioner(_Partitioner):
    name: Literal["linear"]


class SquarePartitioner(_Partitioner):
    name: Literal["square"]


class ExponentialPartitioner(_Partitioner):
    name: Literal["exponential"]


class NaturalPartitioner(_Partitioner):
    """One partition per value of a column: the device of leaf-synthetic, a writer, a speaking character."""

    name: Literal["natural"]
    column: str = "client"  # leaf-synthetic's device; e.g. "writer_id" (FEMNIST), "character_id" (Shakespeare)


class ListedPartitioner(_Partitioner):
    """Fixed client splits: one file per client (in file-name order) listing its examples by name."""

    name: Literal["listed"]
    num_partitions: int = Field(ge=1)  # how many files `files` matches (required: the clients are fixed)
    files: str  # a glob relative to the dataset's folder, e.g. "5_clients/split_1/*"


PartitionerSection = Annotated[
    IidPartitioner | DirichletPartitioner | PathologicalPartitioner | ShardPartitioner | SizePartitioner
    | LinearPartitioner | SquarePartitioner | ExponentialPartitioner | NaturalPartitioner | ListedPartitioner,
    Field(discriminator="name")]


def kind_tag(model: type[BaseModel]) -> str | None:
    """The kind a section model stands for (its `name` or `mode` literal), None for a section without kinds."""
    return next((get_args(model.model_fields[f].annotation)[0] for f in ("name", "mode") if f in model.model_fields
                 and get_args(model.model_fields[f].annotation)), None)


def kinds(section: Any) -> dict[str, type[BaseModel]]:
    """A section with kinds (PartitionerSection, PrivacySection) as {kind: its model}."""
    return {kind_tag(m): m for m in get_args(get_args(section)[0])}


PARTITIONERS = tuple(kinds(PartitionerSection))


class FeatureSkewSection(Section):
    kind: Literal["noise", "affine"] = "noise"
    noise_std_max: float = Field(0.5, ge=0)
    scale_max: float = Field(0.5, ge=0, lt=1)
    shift_std: float = Field(0.5, ge=0)


class GeneratorSection(Section):
    """Parameters of the synthetic datasets (leaf-synthetic, gaussian-regression, synthetic-images)."""

    n_samples: int = Field(2000, ge=2)
    n_features: int = Field(60, ge=1)
    noise_std: float = Field(1.0, ge=0)
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(1.0, ge=0)
    num_classes: int = Field(10, ge=2)


class ImagesSection(Section):
    """How image files are read (datasets folder:PATH and images:LABELS.csv)."""

    folder: str | None = None  # images: where the labels CSV's names are (default: the CSV's folder)
    test_list: str | None = None  # images: a CSV whose first column names the test examples (beside the labels)
    test_folder: str | None = None  # images: where test_list's names are (default: folder)
    image_column: str | None = None  # images: the column of image names when the CSV has a header (default: first)
    size: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=2, max_length=2)  # [h, w] on decoding
    channels: Literal[1, 3] | None = None  # 3: grey images are broadcast to three channels (as RGB models want)


class _Transform(Section):
    stage: Literal["train", "test", "both"] | None = None  # default: random ones train, the others both


class ResizeTransform(_Transform):
    """Bilinear (antialiased) resize: `size` = [s] makes the shorter side s, [h, w] both."""

    kind: Literal["resize"]
    size: list[Annotated[int, Field(ge=1)]] = Field(min_length=1, max_length=2)


class CenterCropTransform(_Transform):
    kind: Literal["center_crop"]
    size: list[Annotated[int, Field(ge=1)]] = Field(min_length=1, max_length=2)


class RandomCropTransform(_Transform):
    """A random crop of `size` after zero `padding` on every side (the CIFAR augmentation: 32, padding 4)."""

    kind: Literal["random_crop"]
    size: list[Annotated[int, Field(ge=1)]] = Field(min_length=1, max_length=2)
    padding: int = Field(0, ge=0)


class RandomResizedCropTransform(_Transform):
    """A crop of random area fraction (`scale`) and aspect ratio, resized to `size` (torchvision's picking)."""

    kind: Literal["random_resized_crop"]
    size: list[Annotated[int, Field(ge=1)]] = Field(min_length=1, max_length=2)
    scale: list[Annotated[float, Field(gt=0)]] = Field([0.08, 1.0], min_length=2, max_length=2)
    ratio: list[Annotated[float, Field(gt=0)]] = Field([3 / 4, 4 / 3], min_length=2, max_length=2)


class RandomRotationTransform(_Transform):
    kind: Literal["random_rotation"]
    degrees: float = Field(gt=0, le=180)  # an angle uniform in [-degrees, degrees]


class HorizontalFlipTransform(_Transform):
    kind: Literal["horizontal_flip"]
    p: float = Field(0.5, ge=0, le=1)


class NormalizeTransform(_Transform):
    kind: Literal["normalize"]
    mean: list[float] = Field(min_length=1)
    std: list[Annotated[float, Field(gt=0)]] = Field(min_length=1)


TransformSection = Annotated[
    ResizeTransform | CenterCropTransform | RandomCropTransform | RandomResizedCropTransform
    | RandomRotationTransform | HorizontalFlipTransform | NormalizeTransform, Field(discriminator="kind")]


class DataSection(Section):
    dataset: str = "digits"
    test_fraction: float = Field(0.2, gt=0, lt=1)
    label_column: str = "label"
    feature_columns: list[str] | None = None
    data_files: str | None = None
    hf_subset: str | None = None
    hf_test_split: str = "test"
    partitioner: PartitionerSection = Field(default_factory=IidPartitioner)
    feature_skew: FeatureSkewSection | None = None
    generator: GeneratorSection = Field(default_factory=GeneratorSection)
    vocabulary: Literal["leaf-shakespeare"] | None = None  # text: characters -> indices (fedsim.models.leaf)
    task: Literal["auto", "classification", "regression"] = "auto"  # auto: float labels regress, others classes
    images: ImagesSection | None = None
    transforms: list[TransformSection] | None = None  # [[data.transforms]], applied in order (fedsim.inputs)

    @field_validator("partitioner", mode="before")
    @classmethod
    def _iid_by_default(cls, v: Any) -> Any:
        return {**v, "name": "iid"} if isinstance(v, dict) and "name" not in v else v

    @field_validator("dataset")
    @classmethod
    def _known(cls, v: str) -> str:
        if v in EMBEDDED_DATASETS or v.startswith(tuple(SOURCE_PREFIXES)) and len(v.split(":", 1)[1]) > 0:
            return v
        raise ValueError(f"unknown dataset '{v}'; {suggest(v, [*EMBEDDED_DATASETS, *SOURCE_PREFIXES.values()])}")

    @model_validator(mode="after")
    def _images_settings(self) -> DataSection:
        if self.images is not None and not self.dataset.startswith(IMAGE_SOURCES):
            raise ValueError(f"data.images reads image files, but data.dataset = '{self.dataset}' is not one; use "
                             "dataset = 'folder:PATH' or 'images:LABELS.csv', or remove [data.images]")
        if self.task != "auto" and self.dataset in EMBEDDED_DATASETS:
            raise ValueError(f"data.task applies to files and hub datasets; '{self.dataset}' has its own task, so "
                             "remove data.task")
        if self.partitioner.name == "listed" and not self.dataset.startswith(IMAGE_SOURCES):
            raise ValueError("data.partitioner 'listed' names examples by file, which needs an image dataset "
                             "('folder:PATH' or 'images:LABELS.csv'); pick another partitioner")
        return self


class ModelSection(Section):
    """A built-in model by `name`, or your own by `factory` (fedsim.models)."""

    name: str | None = None  # a built-in (MODELS); "mlp" when neither name nor factory is given
    hidden: list[Annotated[int, Field(ge=1)]] = [64]  # widths of the hidden layers ([] : none; convnet: dense)
    channels: list[Annotated[int, Field(ge=1)]] = [16, 32]  # cnn, convnet: output channels per convolution
    batch_norm: bool = False  # cnn: BatchNorm2d after each convolution
    stem: Literal["cifar", "imagenet"] | None = None  # resnet*: 3x3 stem without pool (default), or 7x7 + pool
    norm: Literal["batch", "group", "none"] | None = None  # resnet*: BatchNorm (default), GroupNorm or none
    factory: str | None = None  # your own model: "package.module:callable" returning an nn.Module
    args: dict[str, Any] = {}  # factory: its keyword arguments
    factory_path: str | None = None  # factory: the folder searched first for its module (the scenario's folder)
    init: str | None = None  # a state_dict file (torch.save) the initial global model loads

    _known = field_validator("name")(lambda v: v if v is None else _one_of(v, MODELS, "model"))

    @model_validator(mode="before")
    @classmethod
    def _mlp_by_default(cls, v: Any) -> Any:
        return {**v, "name": "mlp"} if isinstance(v, dict) and v.get("name") is None and \
            v.get("factory") is None else v

    @model_validator(mode="after")
    def _one_model(self) -> ModelSection:
        if self.factory is not None and self.name is not None:
            raise ValueError(f"model.name = '{self.name}' and model.factory = '{self.factory}' both name the model; "
                             "keep one of them")
        if self.args and self.factory is None:
            raise ValueError("model.args are a factory's keyword arguments but model.factory is not set; set it, or "
                             "remove model.args")
        for key in ("stem", "norm"):
            if getattr(self, key) is not None and not (self.name or "").startswith("resnet"):
                raise ValueError(f"model.{key} applies to the ResNets only (model.name = 'resnet18' / 'resnet34' / "
                                 f"'resnet50'); remove it")
        return self


class _ClientDevice(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def local(self) -> LocalTraining:
        """The local-training settings every train message carries."""
        return LocalTraining(**self.model_dump(exclude={"device"}))


def _local_training_fields() -> dict[str, tuple[Any, Any]]:
    hints = get_type_hints(LocalTraining, include_extras=True)
    return {f.name: (hints[f.name], f.default) for f in dataclasses.fields(LocalTraining)}


# [client]: fedsim.protocol.LocalTraining's fields (one list of names, ranges and defaults) plus where to train
ClientSection = create_model("ClientSection", __base__=_ClientDevice, __module__=__name__, **_local_training_fields())


class StrategySection(_NoBooleanNumbers):
    """Flower strategy by name; keys other than the ones below are passed to its constructor."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)
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

    def node_minimums(self, num_clients: int) -> dict[str, int]:
        """How many clients a round waits for (the strategy's min_*_nodes), given or fedsim's defaults: two (or
        every client, when fewer) for training and availability; for federated evaluation two when it runs."""
        two = min(2, num_clients)
        evaluate = self.min_evaluate_nodes if self.min_evaluate_nodes is not None else \
            (two if self.fraction_evaluate > 0 else 0)
        return {"min_train_nodes": self.min_train_nodes or two, "min_evaluate_nodes": evaluate,
                "min_available_nodes": self.min_available_nodes or two}


class _Privacy(Section):
    noise_multiplier: float | None = Field(None, gt=0)
    target_epsilon: float | None = Field(None, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    accountant: Literal["rdp", "prv", "gdp"] = "rdp"
    # epsilon covers training only: clients' training loss / accuracy and federated evaluation on their data are
    # not released unless this is true (then the ledger lists them as `uncovered`)
    report_uncovered: bool = False

    @model_validator(mode="after")
    def _noise_or_budget(self) -> _Privacy:
        if self.noise_multiplier is None and self.target_epsilon is None:
            raise ValueError("privacy needs noise_multiplier or target_epsilon; set one (or both: then "
                             "target_epsilon is a hard budget)")
        if self.accountant == "gdp" and self.target_epsilon is not None:
            from fedsim.privacy import GDP_NO_BUDGET  # numpy only; opacus loads when epsilon is computed

            raise ValueError(GDP_NO_BUDGET)
        return self


class DPSGDPrivacy(_Privacy):
    """Sample-level DP-SGD in clients (Opacus)."""

    mode: Literal["dp-sgd"]
    max_grad_norm: float = Field(1.0, gt=0)  # per-example clipping norm
    fix_model: bool = False  # let Opacus's ModuleValidator.fix replace unsupported layers


class ClientDPPrivacy(_Privacy):
    """Client-level DP-FedAvg on the server, with Poisson client sampling."""

    mode: Literal["client-dp"]
    clipping_norm: float = Field(1.0, gt=0)  # per-client update clipping norm
    q: float | None = Field(None, gt=0, le=1)  # Poisson client sampling rate

    @model_validator(mode="after")
    def _sampled(self) -> ClientDPPrivacy:
        if self.q is None:
            raise ValueError(f"{self.mode} needs q, the client sampling rate; set privacy.q (e.g. 0.2)")
        return self


class ClientDPAdaptivePrivacy(ClientDPPrivacy):
    """Client-level DP-FedAvg whose clipping norm adapts to a quantile of the update norms (Andrew et al., 2021)."""

    mode: Literal["client-dp-adaptive"]
    clipping_norm: float = Field(0.1, gt=0)  # the initial clipping norm
    target_unclipped_quantile: float = Field(0.5, ge=0, le=1)  # share of updates the norm should leave unclipped
    clip_learning_rate: float = Field(0.2, gt=0)  # eta of the geometric update C <- C exp(-eta (b - gamma))
    clipped_count_stddev: float | None = Field(None, gt=0)  # noise on the unclipped count; default q N / 20


PrivacySection = Annotated[DPSGDPrivacy | ClientDPPrivacy | ClientDPAdaptivePrivacy, Field(discriminator="mode")]


class BagsSection(Section):
    """Learning from aggregate responses: clients only see bag means / label proportions (docs/algorithms.md)."""

    k: int = Field(1, ge=1)
    rho: float = Field(0.0, ge=0, le=1)  # 0 bag-level, 1 instance-level, in between interpolating
    epsilon: float | None = Field(None, gt=0)  # Laplace label-DP of the released bag targets; omit for none
    clip: float = Field(1.0, gt=0)  # responses are clipped to [-B, B], B = clip * sqrt(log n)


class FaultsSection(Section):
    """Simulated unreliable clients, drawn per (seed, round, client, phase): never answers, raises, or answers late."""

    dropout_rate: float = Field(0.0, ge=0, le=1)
    failure_rate: float = Field(0.0, ge=0, le=1)
    straggler_rate: float = Field(0.0, ge=0, le=1)
    straggler_delay_s: float = Field(1.0, ge=0)
    # "virtual": a straggler's delay only advances the round's simulated clock (no waiting; sim_time_s in
    # metrics.jsonl); "real": it sleeps (for checks of wall-clock behaviour)
    straggler_clock: Literal["virtual", "real"] = "virtual"
    deadline_s: float | None = Field(None, gt=0)  # simulated round deadline: a later answer counts as failed


def _unlearning_methods() -> dict:
    from fedsim.unlearning.methods import methods  # the registry; torch kept off the schema's import path

    return methods()


class UnlearningRequest(Section):
    """Forget a client, a class, samples of one client, or a random fraction of every client's examples, after
    round `at_round`; compare `method`s."""

    at_round: int = Field(ge=1)
    kind: Literal["client", "class", "samples", "random"]
    target: int | None = Field(None, ge=0)  # client id (client, samples) or class label (class); random: none
    samples: list[int] | None = None  # kind = "samples": indices into the client's partition
    fraction: float | None = Field(None, gt=0, lt=1)  # kind = "random": the share of each client's examples
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
        if (self.kind == "random") != (self.target is None):
            raise ValueError("kind 'random' forgets from every client and takes no target; the other kinds need "
                             "one; set target (or remove it for 'random')")
        if (self.kind == "random") != (self.fraction is not None):
            raise ValueError("fraction is the share of each client's examples a kind 'random' request forgets, and "
                             "only that; set fraction = 0.1 for 'random', or remove it")
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


class UnlearningSection(Section):
    """Requests, the history store, the budget of the federated unlearning methods, and each method's own settings
    (`per_method.<name>`: its table, declared by the method: fedsim.unlearning.methods.base.MethodSettings)."""

    requests: list[UnlearningRequest] = Field(default_factory=list)
    history_interval: int = Field(1, ge=1)  # store global models + client updates every N rounds
    rounds: int = Field(2, ge=1)  # federated rounds of finetune / GA / RL / SalUn, post-PGA rounds
    epochs: int = Field(1, ge=1)  # local epochs per unlearning round
    lr: float | None = Field(None, gt=0)  # default: client.lr
    batch_size: int | None = Field(None, ge=1)  # default: client.batch_size
    evaluate: bool = True  # UA / RA / TA / MIA and the retrain reference for every request
    per_method: dict[str, Any] = Field(default_factory=dict)  # method name -> its settings (validated by it)

    @field_validator("per_method", mode="before")
    @classmethod
    def _methods(cls, v: Any) -> dict[str, Any]:
        """Each table validated by its method's settings model; an unknown method or key names the choices."""
        if not isinstance(v, dict):  # (pydantic reports a ValueError as the key's error; a TypeError would escape)
            raise ValueError("must be a table of unlearning method -> its settings, e.g. "  # noqa: TRY004
                             "[unlearning.per_method.salun]")
        registry, out = _unlearning_methods(), {}
        for name, table in v.items():
            _one_of(name, tuple(registry), "unlearning method")
            model = registry[name].settings
            if isinstance(table, model):
                out[name] = table
                continue
            if not isinstance(table, dict):
                raise ValueError(f"{name}: must be a table of its settings (choose from: "  # noqa: TRY004
                                 f"{', '.join(model.model_fields)})")
            unknown = sorted(set(table or {}) - set(model.model_fields))
            if unknown:
                raise ValueError(f"{name}: unknown key '{unknown[0]}' for unlearning method '{name}'; choose from: "
                                 f"{', '.join(model.model_fields)}")
            try:
                out[name] = model.model_validate(table or {})
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(part) for part in err["loc"])
                raise ValueError(f"{name}.{where}: {err['msg'][0].lower()}{err['msg'][1:]}") from None
        return out

    def method_settings(self, name: str) -> Any:
        """Method `name`'s settings: its per_method table, or its defaults."""
        return self.per_method.get(name) or _unlearning_methods()[name].settings()


class OutputSection(Section):
    dir: str = "runs"
    save_model: bool = True
    trackers: list[Literal["tensorboard", "mlflow"]] = Field(default_factory=list)  # fedsim.trackers
    mlflow_uri: str | None = None  # default: a SQLite store RUN_DIR/mlflow.db, artifacts in RUN_DIR/mlartifacts


class ScenarioSchema(Section):
    """A whole simulation: what to train, on which data, with which strategy, for how long (the schema;
    fedsim.scenario.Scenario adds loading)."""

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
    def _consistent(self) -> ScenarioSchema:
        n = self.data.partitioner.num_partitions
        for key in ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes"):
            value = getattr(self.strategy, key)
            if value is not None and value > n:
                raise ValueError(
                    f"strategy.{key} = {value} exceeds data.partitioner.num_partitions = {n} "
                    f"(the round would wait forever); use at most {n}"
                )
        if self.privacy is not None and not self.privacy.report_uncovered and self.strategy.fraction_evaluate > 0:
            raise ValueError("strategy.fraction_evaluate > 0 evaluates on clients' private data, which epsilon does "
                             "not cover; set it to 0 (central evaluation always runs), or privacy.report_uncovered "
                             "= true to release it anyway (the ledger then lists it as uncovered)")
        if self.strategy.name == "krum" and self.strategy.params.get("num_malicious_nodes"):
            f = self.strategy.params["num_malicious_nodes"]
            per_round = max(int(n * self.strategy.fraction_train), self.strategy.node_minimums(n)["min_train_nodes"])
            if isinstance(f, int) and 2 * f + 2 >= per_round:
                raise ValueError(f"strategy.num_malicious_nodes = {f}: Krum tolerates f malicious clients among more "
                                 f"than 2 f + 2 = {2 * f + 2} a round, and a round here trains {per_round}; use at "
                                 f"most {max(0, (per_round - 3) // 2)}, or train more clients a round")
        forgotten: dict[int, int] = {}
        for i, request in enumerate(self.unlearning.requests if self.unlearning else []):
            if request.kind == "client" and request.target in forgotten:
                raise ValueError(f"unlearning.requests.{i}: client {request.target} is already forgotten by "
                                 f"request {forgotten[request.target]}; remove one of the two")
            if request.kind == "client":
                forgotten[request.target] = i
            if request.at_round >= self.run.rounds:
                raise ValueError(f"unlearning.requests.{i}.at_round = {request.at_round} is not before the run's "
                                 f"last round ({self.run.rounds}); requests are served after round at_round, "
                                 f"so use at most {self.run.rounds - 1}")
            if request.kind in ("client", "samples") and request.target >= n:
                raise ValueError(f"unlearning.requests.{i}.target: there is no client {request.target} "
                                 f"(clients are 0..{n - 1}); use a client id below {n}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())
