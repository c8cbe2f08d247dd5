"""Dataset sources: embedded (scikit-learn, synthetic), Hugging Face via flwr-datasets, local files.

Every source becomes a `datasets.DatasetDict` with a "train" and a "test" split and two columns:
"x" (flattened float32 features) and "label" (int64 class or float32 target). leaf-synthetic adds a
"client" column (the device that generated the example) for the `natural` partitioner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import ClassLabel, Dataset, DatasetDict, Value

from fedsim.errors import DataError
from fedsim.example_data import missing_hint
from fedsim.inputs import InputPipeline
from fedsim.scenario import DataSection, GeneratorSection

REGRESSION_DATASETS = {"diabetes", "gaussian-regression"}


@dataclass(frozen=True)
class SourceInfo:
    """What models and metrics need to know about a dataset."""

    input_shape: tuple[int, ...]  # what the model takes (after the input pipeline, when there is one)
    num_classes: int  # 0 for regression
    pipeline: InputPipeline | None = field(default=None, compare=False)  # image data (fedsim.inputs)

    @property
    def task(self) -> str:
        return "regression" if self.num_classes == 0 else "classification"


# ---- embedded -----------------------------------------------------------------------------
def _sklearn(name: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    from sklearn import datasets as skd

    if name == "digits":
        bunch = skd.load_digits()
        return bunch.data / 16.0, bunch.target, (1, 8, 8)
    loader = {"breast_cancer": skd.load_breast_cancer, "wine": skd.load_wine, "diabetes": skd.load_diabetes}[name]
    bunch = loader()
    x = bunch.data
    x = (x - x.mean(0)) / x.std(0)  # tabular features on very different scales
    y = bunch.target
    if name == "diabetes":
        y = (y - y.mean()) / y.std()  # standardised target: mse is relative to the target's variance
    return x, y, (x.shape[1],)


def leaf_synthetic(gen: GeneratorSection, num_devices: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic(alpha, beta) of the FedProx paper: each device k has its own softmax model and feature mean.

    u_k ~ N(0, alpha), W_k, b_k ~ N(u_k, 1); B_k ~ N(0, beta), v_k ~ N(B_k, 1);
    x ~ N(v_k, diag(j^-1.2)); y = argmax softmax(W_k x + b_k). Device sizes: lognormal(4, 2) + 50, scaled so the
    total is about `n_samples` (at least 10 per device).
    """
    rng = np.random.default_rng(seed)
    d, c = gen.n_features, gen.num_classes
    raw_sizes = rng.lognormal(4, 2, num_devices) + 50
    sizes = np.maximum(10, np.round(raw_sizes / raw_sizes.sum() * gen.n_samples)).astype(int)
    cov_diag = np.arange(1, d + 1, dtype=float) ** -1.2
    xs, ys, clients = [], [], []
    for k, n_k in enumerate(sizes):
        u = rng.normal(0, np.sqrt(gen.alpha))
        big_b = rng.normal(0, np.sqrt(gen.beta))
        w = rng.normal(u, 1, (d, c))
        b = rng.normal(u, 1, c)
        v = rng.normal(big_b, 1, d)
        x = rng.normal(v, np.sqrt(cov_diag), (n_k, d))
        xs.append(x)
        ys.append(np.argmax(x @ w + b, axis=1))
        clients.append(np.full(n_k, k))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(clients)


def gaussian_regression(gen: GeneratorSection, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x ~ N(0, I_d), y = x . theta + N(0, noise_std^2), theta ~ N(0, I_d / d)."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(0, 1 / np.sqrt(gen.n_features), gen.n_features)
    x = rng.normal(size=(gen.n_samples, gen.n_features))
    return x, x @ theta + rng.normal(0, gen.noise_std, gen.n_samples)


def synthetic_images(gen: GeneratorSection, seed: int, shape: tuple[int, int, int] = (3, 32, 32)
                     ) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10-shaped images: class k's pattern (white noise blurred by a 4x4 box, per channel) plus
    N(0, noise_std^2) pixel noise; labels uniform over `num_classes`."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    raw = rng.normal(size=(gen.num_classes, c, h + 3, w + 3))
    patterns = np.lib.stride_tricks.sliding_window_view(raw, (4, 4), axis=(2, 3)).sum(axis=(-2, -1)) / 4.0
    y = rng.integers(0, gen.num_classes, gen.n_samples)
    x = patterns[y].astype(np.float32) + rng.normal(0, gen.noise_std, (gen.n_samples, c, h, w)).astype(np.float32)
    return x, y


def _embedded(cfg: DataSection, seed: int) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
    client = None
    if cfg.dataset == "leaf-synthetic":
        x, y, client = leaf_synthetic(cfg.generator, cfg.partitioner.num_partitions, seed)
        shape = (x.shape[1],)
    elif cfg.dataset == "gaussian-regression":
        x, y = gaussian_regression(cfg.generator, seed)
        shape = (x.shape[1],)
    elif cfg.dataset == "synthetic-images":
        x, y = synthetic_images(cfg.generator, seed)
        shape = x.shape[1:]
    else:
        x, y, shape = _sklearn(cfg.dataset)
    regression = cfg.dataset in REGRESSION_DATASETS
    columns = {"x": x.reshape(len(x), -1).astype(np.float32), "label": y.astype(np.float32 if regression else np.int64)}
    if client is not None:
        columns["client"] = client
    return columns, shape


# ---- outside data -------------------------------------------------------------------------
def _read_file(path_text: str) -> Dataset:
    path = Path(path_text)
    if not path.is_file():
        raise DataError(f"data.dataset: file:{path_text}", "file not found", missing_hint(path_text, "check the path"))
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return Dataset.from_parquet(str(path))
        if suffix == ".csv":
            return Dataset.from_csv(str(path))
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                return Dataset.from_dict({k: arrays[k] for k in arrays.files})
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise DataError(f"data.dataset: file:{path_text}", f"cannot read: {exc}",
                        "pass a valid parquet/csv/npz file") from None
    raise DataError(f"data.dataset: file:{path_text}", f"unsupported file type '{suffix}'",
                    "use .parquet, .csv or .npz")


def standardise_columns(ds: Dataset, cfg: DataSection) -> tuple[dict[str, np.ndarray], tuple[int, ...], int]:
    """Any table -> columns x (float32 features, or uint8 pixels) and label; returns (columns, input shape, the
    number of classes: 0 for regression, a ClassLabel's own count, the vocabulary's, or max label + 1)."""
    label = cfg.label_column
    if label not in ds.column_names:
        raise DataError("data.label_column", f"no column '{label}' (columns: {', '.join(ds.column_names)})",
                        "set data.label_column to the label's column")
    natural = cfg.partitioner.column if cfg.partitioner.name == "natural" else None
    if natural is not None and natural not in ds.column_names:
        raise DataError("data.partitioner.column", f"no column '{natural}' (columns: {', '.join(ds.column_names)})",
                        "name the column whose values are the clients")
    feature_cols = cfg.feature_columns or [c for c in ds.column_names if c not in (label, natural)]
    missing = [c for c in feature_cols if c not in ds.column_names]
    if missing or not feature_cols:
        raise DataError("data.feature_columns", f"unknown or empty columns {missing}",
                        f"choose from: {', '.join(ds.column_names)}")
    if label in feature_cols:
        raise DataError("data.feature_columns", f"holds the label column '{label}' (the model would read the answer)",
                        f"remove '{label}' from data.feature_columns")
    feature = ds.features[label]
    characters = cfg.vocabulary is not None and _is_text(feature)
    if _is_text(feature) and not characters:
        ds = ds.class_encode_column(label)
        feature = ds.features[label]
    numeric = isinstance(feature, Value) and feature.dtype.startswith(("float", "int", "uint"))
    regression = cfg.task == "regression" or cfg.task == "auto" and isinstance(feature, Value) and \
        feature.dtype.startswith("float")
    if regression and not numeric:
        raise DataError("data.task", f"'regression' needs a numeric label column but '{label}' is not",
                        "use task = 'classification'")
    table = ds.with_format("numpy")
    parts, shape = [], None
    for col in feature_cols:
        values = _feature(ds, table, col, cfg, pixels=len(feature_cols) == 1)
        if values.ndim == 3:  # (n, h, w) greyscale images
            values = values[:, None]
        elif values.ndim == 4 and values.shape[-1] in (1, 3):  # (n, h, w, c) -> channels first
            values = values.transpose(0, 3, 1, 2)
        shape = values.shape[1:] if len(feature_cols) == 1 else None
        parts.append(np.ascontiguousarray(values).reshape(len(values), -1))
    x = np.concatenate(parts, axis=1)
    raw_y = next_characters(ds[label], label, cfg.dataset) if characters else np.asarray(table[label])
    for name, values in ((label, raw_y), *zip(feature_cols, parts, strict=True)):
        empty = np.flatnonzero(np.isnan(values.reshape(len(values), -1)).any(axis=1)) \
            if values.dtype.kind == "f" else np.flatnonzero([v is None for v in values]) if values.dtype == object \
            else np.array([], dtype=int)
        if empty.size:
            raise DataError(f"data.dataset: {cfg.dataset}", f"column '{name}' row {empty[0] + 1} is empty "
                            f"({empty.size} row{'s' if empty.size > 1 else ''} in all)",
                            "fill or drop the rows with missing values")
    y = raw_y.astype(np.float32 if regression else np.int64)
    extra = {"client": np.unique(np.asarray(table[natural]), return_inverse=True)[1]} if natural else {}
    for name, values in ((label, y), *zip(feature_cols, parts, strict=True)):
        infinite = np.flatnonzero(np.isinf(values.reshape(len(values), -1)).any(axis=1)) \
            if values.dtype.kind == "f" else np.array([], dtype=int)
        if infinite.size:  # inf itself, or a number beyond float32's range (1e400, 1e39)
            raise DataError(f"data.dataset: {cfg.dataset}", f"column '{name}' row {infinite[0] + 1} is not a finite "
                            f"float32 number ({infinite.size} row{'s' if infinite.size > 1 else ''} in all)",
                            "replace infinities and values beyond +-3.4e38, or drop those rows")
    classes = feature.num_classes if isinstance(feature, ClassLabel) else num_classes(cfg, y, regression)
    return {"x": x, "label": y, **extra}, tuple(shape or (x.shape[1],)), classes


def _feature(ds: Dataset, table, col: str, cfg: DataSection, pixels: bool) -> np.ndarray:
    """One feature column as numbers: images (one column of them) stay uint8 pixels (the input pipeline decodes
    them per batch, fedsim.inputs), text with `data.vocabulary` becomes character indices, the rest float32."""
    if cfg.vocabulary is not None and _is_text(ds.features[col]):
        return encode_characters(ds[col], col, cfg.dataset).astype(np.float32)
    try:
        raw = np.asarray(table[col])
        if pixels and raw.dtype == np.uint8 and raw.ndim >= 3:
            return raw
        values = raw.astype(np.float32)
    except (ValueError, TypeError):
        row, value = _first_non_number(ds[col])
        raise DataError(f"data.dataset: {cfg.dataset}", f"column '{col}' row {row} holds {value!r}, not a number",
                        "make every feature column numeric, or list the numeric ones in data.feature_columns") \
            from None
    if values.ndim >= 3 and values.max() > 1.0:  # image pixels stored as numbers wider than uint8
        values = values / 255.0
    return values


def encode_characters(texts: list[str], col: str, dataset: str) -> np.ndarray:
    """Strings of one length -> (n, length) indices into LEAF's Shakespeare vocabulary (int64)."""
    from fedsim.models.leaf import VOCABULARY

    index = {c: i for i, c in enumerate(VOCABULARY)}
    lengths = {len(t) for t in texts}
    if len(lengths) > 1:
        row = next(i for i, t in enumerate(texts) if len(t) != len(texts[0]))
        raise DataError(f"data.dataset: {dataset}", f"column '{col}' row {row + 1} has {len(texts[row])} characters "
                        f"but row 1 has {len(texts[0])}", "give every example the same number of characters")
    out = np.empty((len(texts), lengths.pop() if lengths else 0), dtype=np.int64)
    for i, text in enumerate(texts):
        try:
            out[i] = [index[c] for c in text]
        except KeyError as exc:
            raise DataError(f"data.dataset: {dataset}", f"column '{col}' row {i + 1} holds {exc.args[0]!r}, which "
                            "LEAF's vocabulary lacks", "map it to one of its 80 characters, or drop the row") from None
    return out


def _is_text(feature) -> bool:
    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def next_characters(texts: list[str], col: str, dataset: str) -> np.ndarray:
    """A label column of single characters -> their vocabulary indices (the class of next-character prediction)."""
    if any(len(t) != 1 for t in texts):
        row = next(i for i, t in enumerate(texts) if len(t) != 1)
        raise DataError(f"data.dataset: {dataset}", f"label column '{col}' row {row + 1} holds {texts[row]!r}, not one "
                        "character", "label each example with the one character that follows it")
    return encode_characters(texts, col, dataset)[:, 0]


def num_classes(cfg: DataSection, labels: np.ndarray, regression: bool) -> int:
    """0 for regression; with data.vocabulary its size (every character is a class), else max label + 1."""
    if regression:
        return 0
    if cfg.vocabulary is not None:
        from fedsim.models.leaf import VOCABULARY

        return len(VOCABULARY)
    return class_count(labels)


def _first_non_number(values) -> tuple[int, object]:
    """(1-based row, value) of the first entry float() refuses."""
    for i, value in enumerate(values):
        try:
            float(value)
        except (TypeError, ValueError):
            return i + 1, value
    return 0, None


# ---- the entry point ----------------------------------------------------------------------
def make_dataset(columns: dict[str, np.ndarray]) -> Dataset:
    """numpy columns -> a datasets.Dataset through Arrow (2-D x becomes a fixed-size list column)."""
    arrays = {}
    for name, values in columns.items():
        if values.ndim == 2:
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])
        else:
            arrays[name] = pa.array(values)
    return Dataset.from_dict(arrays)


MIN_TEST_EXAMPLES = 5  # below this, central accuracy moves in steps of more than 0.2: not a measurement


def split_train_test(columns: dict[str, np.ndarray], test_fraction: float, seed: int) -> DatasetDict:
    """A seeded random hold-out of `test_fraction` of the rows (at least MIN_TEST_EXAMPLES, and at least one row
    left to train on) for central evaluation."""
    n = len(columns["label"])
    order = np.random.default_rng([seed, 17]).permutation(n)
    n_test = min(n - 1, max(1, math.ceil(n * test_fraction)))
    if n_test < MIN_TEST_EXAMPLES:
        raise DataError("data.test_fraction", f"{n} rows x test_fraction {test_fraction:g} leave a test set of "
                        f"{n_test} example(s); central evaluation needs at least {MIN_TEST_EXAMPLES}",
                        f"use more data or data.test_fraction >= {math.ceil(100 * MIN_TEST_EXAMPLES / n) / 100:g}"
                        if n > MIN_TEST_EXAMPLES else "use more data")
    test, train = order[:n_test], np.sort(order[n_test:])
    return DatasetDict(train=make_dataset({k: v[train] for k, v in columns.items()}),
                       test=make_dataset({k: v[test] for k, v in columns.items()}))


def class_count(labels: np.ndarray) -> int:
    return int(labels.max()) + 1


def load_embedded(cfg: DataSection, seed: int) -> tuple[DatasetDict, SourceInfo]:
    columns, shape = _embedded(cfg, seed)
    num_classes = 0 if cfg.dataset in REGRESSION_DATASETS else class_count(columns["label"])
    return split_train_test(columns, cfg.test_fraction, seed), SourceInfo(shape, num_classes)


def load_file(cfg: DataSection, seed: int) -> tuple[DatasetDict, SourceInfo]:
    columns, shape, classes = standardise_columns(_read_file(cfg.dataset.split(":", 1)[1]), cfg)
    present = np.unique(columns["label"]) if classes else None
    if present is not None and present.size < 2:
        raise DataError("data.label_column", f"'{cfg.label_column}' has one class ({present[0]}) in all "
                        f"{len(columns['label'])} rows: there is nothing to classify",
                        "use data with at least two classes (a number-valued label with many values is a "
                        "regression target when its column holds floats)")
    info = SourceInfo(shape, classes)
    return split_train_test(columns, cfg.test_fraction, seed), info
