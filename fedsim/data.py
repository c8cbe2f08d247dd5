"""Client partitions and the central test set of a scenario, via flwr-datasets partitioners.

`federated_data(cfg, seed)` builds a source once per (data section, seed) and caches it; `partition(i)`
loads and caches only partition i (the partitioner computes its index assignment once).
"""

from __future__ import annotations

import csv
import functools
import warnings
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets import Dataset, DatasetDict, concatenate_datasets
from flwr_datasets import partitioner as fp

from fedsim.errors import DataError
from fedsim.images import load_collection
from fedsim.scenario import IMAGE_SOURCES, DataSection, FeatureSkewSection, PartitionerSection
from fedsim.sources import (
    SourceInfo,
    class_count,
    load_embedded,
    load_file,
    make_dataset,
    split_train_test,
    standardise_columns,
)
from fedsim.transforms import pipeline_for

datasets.disable_progress_bars()  # fedsim shows its own progress
fp.natural_id_partitioner.tqdm = functools.partial(fp.natural_id_partitioner.tqdm, disable=True)

LABEL_PARTITIONERS = {"dirichlet", "pathological"}


NATURAL_COLUMN = "client"  # the natural partitioner's ids (fedsim.sources renames the chosen column to it)


def make_partitioner(p: PartitionerSection, seed: int) -> fp.Partitioner:
    """The flwr-datasets partitioner named by the scenario, partitioning by the "label" column."""
    n = p.num_partitions
    if p.name == "iid":
        return fp.IidPartitioner(n)
    if p.name == "dirichlet":
        return fp.DirichletPartitioner(n, "label", p.alpha, p.min_partition_size, p.self_balancing, seed=seed)
    if p.name == "pathological":
        return fp.PathologicalPartitioner(n, "label", p.classes_per_partition, p.class_assignment, seed=seed)
    if p.name == "shard":
        shards = None if p.shard_size else p.shards_per_partition
        return fp.ShardPartitioner(n, "label", shards, p.shard_size, seed=seed)
    if p.name == "size":
        if not p.sizes or len(p.sizes) != n:
            raise DataError("data.partitioner.sizes", f"need {n} sizes (one per partition)",
                            "set sizes = [n_0, n_1, ...] with num_partitions entries")
        return fp.SizePartitioner(p.sizes)
    if p.name == "natural":
        return fp.NaturalIdPartitioner(NATURAL_COLUMN)
    if p.name == "listed":
        return ListedPartitioner(p.files)
    return {"linear": fp.LinearPartitioner, "square": fp.SquarePartitioner,
            "exponential": fp.ExponentialPartitioner}[p.name](n)


def skew_features(x: np.ndarray, skew: FeatureSkewSection, partition_id: int, num_partitions: int,
                  seed: int) -> np.ndarray:
    """Per-client feature skew: Gaussian noise growing with the client index, or a random affine map."""
    rng = np.random.default_rng([seed, partition_id, 7])
    if skew.kind == "noise":
        std = skew.noise_std_max * partition_id / max(1, num_partitions - 1)
        return (x + rng.normal(0, std, x.shape)).astype(x.dtype)
    scale = rng.uniform(1 - skew.scale_max, 1 + skew.scale_max, x.shape[1])
    shift = rng.normal(0, skew.shift_std, x.shape[1])
    return (x * scale + shift).astype(x.dtype)


def table_of(ds: Dataset):
    """A dataset's rows as an Arrow table: contiguous selections (most partitioners' output) need no indices
    mapping, so their table is read directly."""
    return ds.data if getattr(ds, "_indices", None) is None else ds.with_format("arrow")[:]


def iid_rows(n: int, num_partitions: int, partition_id: int) -> range:
    """The rows flwr-datasets' IidPartitioner gives a partition: the datasets library's contiguous shard."""
    div, mod = divmod(n, num_partitions)
    start = div * partition_id + min(partition_id, mod)
    return range(start, start + div + (1 if partition_id < mod else 0))


def table_arrays(table) -> tuple[np.ndarray, np.ndarray]:
    """Columns x (n, d) (float32 features, or uint8 pixels) and label (n,) of an Arrow table as numpy (no per-row
    Python work)."""
    column = table.column("x")
    x = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    width = -1 if len(table) else getattr(column.type, "list_size", 0)  # an empty client has no row to infer it
    x = x.reshape(len(table), width)
    return x if x.dtype == np.uint8 else x.astype(np.float32, copy=False), table.column("label").to_numpy()


class ListedPartitioner(fp.Partitioner):
    """Fixed client splits: partition i is the examples the i-th file (by name) matching `pattern` lists, by
    name (the first CSV column; a header line is skipped), relative to the dataset's folder."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = pattern
        self.root: Path | None = None  # the dataset's folder, set with the dataset
        self._rows: list[list[int]] | None = None

    @property
    def files(self) -> list[Path]:
        return sorted(p for p in self.root.glob(self.pattern) if p.is_file())

    @property
    def num_partitions(self) -> int:
        return len(self.files)

    def _index(self) -> list[list[int]]:
        if self._rows is None:
            position = {name: i for i, name in enumerate(self.dataset["name"])}
            seen: dict[str, Path] = {}
            self._rows = []
            for file in self.files:
                with open(file, newline="", encoding="utf-8") as fh:
                    names = [row[0].strip() for row in csv.reader(fh) if row and row[0].strip()]
                if len(names) > 1 and names[0] not in position and all(n in position for n in names[1:]):
                    names = names[1:]  # a header
                rows = []
                for name in names:
                    if name not in position:
                        raise DataError(f"data.partitioner.files: {file}", f"lists '{name}', which is not a "
                                        "training example of the dataset", "fix the name, or label the image")
                    if name in seen:
                        raise DataError(f"data.partitioner.files: {file}", f"lists '{name}', which "
                                        f"{'it' if seen[name] == file else seen[name].name} already lists",
                                        "give every example to one client, once")
                    seen[name] = file
                    rows.append(position[name])
                self._rows.append(rows)
        return self._rows

    def load_partition(self, partition_id: int) -> Dataset:
        return self.dataset.select(self._index()[partition_id])


class FederatedData:
    """The partitions (loaded on demand, cached) and central test set of one scenario. Image data keeps row
    numbers in its tables and `decode` turns them into uint8 pixels, once, when a partition is first loaded."""

    def __init__(self, cfg: DataSection, seed: int, partitioner: fp.Partitioner, test: Dataset,
                 info: SourceInfo, load_partition=None,
                 decode: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.cfg, self.seed, self.partitioner, self.info = cfg, seed, partitioner, info
        self._load_partition = load_partition or partitioner.load_partition
        self._decode = decode
        x, y = self._arrays(table_of(test))
        self.test = torch.from_numpy(x), torch.from_numpy(y)
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def num_partitions(self) -> int:
        return self.cfg.partitioner.num_partitions

    def partition(self, partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        if partition_id not in self._cache:
            try:
                with warnings.catch_warnings():  # Dirichlet resampling chatter; a final failure still raises
                    warnings.filterwarnings("ignore", message="The specified min_partition_size")
                    # pyarrow >= 25 deprecates an argument flwr-datasets' shard partitioner passes when sorting
                    warnings.filterwarnings("ignore", message="Specifying null_placement", category=FutureWarning)
                    x, y = self._partition_arrays(partition_id)
            except (ValueError, KeyError) as exc:
                raise DataError("data.partitioner", f"partitioning failed: {exc}", _partition_fix(self.cfg)) from None
            if self.cfg.feature_skew is not None:
                x = skew_features(x, self.cfg.feature_skew, partition_id, self.num_partitions, self.seed)
            self._cache[partition_id] = torch.from_numpy(x), torch.from_numpy(y)
        return self._cache[partition_id]

    def _partition_table(self, partition_id: int):
        """The partition's rows as an Arrow table (read directly where `_direct_rows` knows them)."""
        rows = self._direct_rows(partition_id)
        if rows is None:
            return table_of(self._load_partition(partition_id))
        table = self.partitioner.dataset.data
        return table.slice(rows.start, len(rows)) if isinstance(rows, range) else table.table.take(rows)

    def _direct_rows(self, partition_id: int) -> range | np.ndarray | None:
        """The rows of the training table the partitioner's load_partition selects, where they are known without
        building a Dataset (~1 ms a client): IID's contiguous slice and a natural partition's rows
        (NaturalIdPartitioner: those of the p-th smallest id), of an unshuffled table; None otherwise."""
        dataset = getattr(self.partitioner, "dataset", None)
        if self._load_partition != self.partitioner.load_partition or getattr(dataset, "_indices", True) is not None:
            return None
        if type(self.partitioner) is fp.IidPartitioner:
            return iid_rows(len(dataset), self.num_partitions, partition_id)
        if type(self.partitioner) is fp.NaturalIdPartitioner:
            return self._natural_rows[partition_id]
        return None

    def _partition_arrays(self, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of a partition: rows known directly are taken from the training table's arrays (converted once),
        not from an Arrow table built per client."""
        rows = self._direct_rows(partition_id) if self._decode is None else None
        if rows is None:
            return self._arrays(self._partition_table(partition_id))
        x, y = self._training_arrays
        if isinstance(rows, range):
            return x[rows.start : rows.stop].copy(), y[rows.start : rows.stop].copy()
        return x[rows], y[rows]

    @functools.cached_property
    def _training_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return table_arrays(self.partitioner.dataset.data.table)

    @functools.cached_property
    def _natural_rows(self) -> list[np.ndarray]:
        """Every natural partition's rows, in row order, partitions in the order of their sorted ids."""
        codes = np.unique(self.partitioner.dataset.data.column(NATURAL_COLUMN).to_numpy(), return_inverse=True)[1]
        return np.split(np.argsort(codes, kind="stable"), np.cumsum(np.bincount(codes))[:-1])

    def _arrays(self, table) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of an Arrow table's rows as writable arrays: features, or for image data the decoded pixels."""
        if self._decode is None:
            x, y = table_arrays(table)
            return x.copy(), y.copy()
        return self._decode(table.column("row").to_numpy()), np.array(table.column("label").to_numpy())

    def labels(self, partition_id: int) -> np.ndarray:
        """Partition `partition_id`'s labels (for image data: without decoding its images)."""
        if self._decode is None or partition_id in self._cache:
            return self.partition(partition_id)[1].numpy()
        return np.array(self._load_partition(partition_id).with_format("numpy")["label"])

    def label_counts(self) -> np.ndarray:
        """(num_partitions, num_classes) example counts; for regression one column of sizes."""
        width = max(1, self.info.num_classes)
        counts = np.zeros((self.num_partitions, width), dtype=int)
        for i in range(self.num_partitions):
            y = self.labels(i)
            counts[i] = np.bincount(y, minlength=width) if self.info.num_classes else len(y)
        return counts


def _partition_fix(cfg: DataSection) -> str:
    if cfg.partitioner.name == "dirichlet":
        return "raise data.partitioner.alpha or lower min_partition_size / num_partitions"
    return "lower data.partitioner.num_partitions or change the partitioner's settings"


def _check(cfg: DataSection, n_train: int, info: SourceInfo, has_client: bool,
           partitioner: fp.Partitioner) -> None:
    p = cfg.partitioner
    if info.task == "regression" and p.name in LABEL_PARTITIONERS:
        raise DataError("data.partitioner.name", f"'{p.name}' needs class labels but '{cfg.dataset}' is regression",
                        "use iid, shard or a quantity-skew partitioner (size, linear, square, exponential)")
    if p.name == "natural" and not has_client:
        raise DataError("data.partitioner.name", f"'natural' needs per-device data, which '{cfg.dataset}' lacks",
                        "use it with dataset = 'leaf-synthetic', or pick another partitioner")
    if p.name == "natural" and cfg.partitioner.num_partitions != partitioner.num_partitions:
        raise DataError("data.partitioner.num_partitions", f"{p.num_partitions}, but column '{p.column}' has "
                        f"{partitioner.num_partitions} values in the training set (one client each)",
                        f"set num_partitions = {partitioner.num_partitions}")
    if p.name == "listed" and p.num_partitions != partitioner.num_partitions:
        raise DataError("data.partitioner.num_partitions", f"{p.num_partitions}, but files = '{p.files}' matches "
                        f"{partitioner.num_partitions} files under {partitioner.root}",
                        f"set num_partitions = {partitioner.num_partitions} (one client per file)")
    if p.num_partitions > n_train:
        raise DataError("data.partitioner.num_partitions",
                        f"{p.num_partitions} partitions but only {n_train} training examples",
                        f"use at most {n_train}")
    if p.name == "pathological" and p.classes_per_partition > info.num_classes:
        raise DataError("data.partitioner.classes_per_partition",
                        f"{p.classes_per_partition} classes per partition but the data has {info.num_classes}",
                        f"use at most {info.num_classes}")
    if p.name == "size" and p.sizes and sum(p.sizes) > n_train:
        raise DataError("data.partitioner.sizes", f"sizes add up to {sum(p.sizes)} > {n_train} training examples",
                        "make them smaller")


def _load_hf(cfg: DataSection, seed: int) -> FederatedData:
    """`hf:<name>` through flwr-datasets' FederatedDataset (a local `data_files` works too, e.g. hf:parquet)."""
    from flwr_datasets import FederatedDataset

    partitioner = make_partitioner(cfg.partitioner, seed)
    info: dict[str, SourceInfo] = {}

    def preprocess(dd: DatasetDict) -> DatasetDict:
        test_split = cfg.hf_test_split if cfg.hf_test_split in dd else None
        parts = [dd["train"]] + ([dd[test_split]] if test_split else [])
        columns, shape, classes = standardise_columns(concatenate_datasets(parts), cfg)
        info["info"] = SourceInfo(shape, classes)
        if not test_split:
            return split_train_test(columns, cfg.test_fraction, seed)
        n = len(dd["train"])
        return DatasetDict(train=make_dataset({k: v[:n] for k, v in columns.items()}),
                           test=make_dataset({k: v[n:] for k, v in columns.items()}))

    kwargs = {"data_files": cfg.data_files} if cfg.data_files else {}
    fds = FederatedDataset(dataset=cfg.dataset[3:], subset=cfg.hf_subset, preprocessor=preprocess,
                           partitioners={"train": partitioner}, seed=seed, **kwargs)
    try:
        train, test = fds.load_split("train"), fds.load_split("test")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - hub / file failures are the user's to fix
        raise DataError(f"data.dataset: {cfg.dataset}", f"cannot load: {exc}",
                        "check the name, data_files and network access") from None
    partitioner.dataset = train  # what FederatedDataset would assign; done here so plots can use it too
    source = info["info"]
    source = with_pipeline(cfg, source, source.input_shape, pixels=_holds_pixels(test))
    _check(cfg, len(train), source, "client" in train.column_names, partitioner)
    return FederatedData(cfg, seed, partitioner, test, source, lambda i: fds.load_partition(i, "train"))


@functools.lru_cache(maxsize=8)
def _cached(cfg_json: str, seed: int) -> FederatedData:
    cfg = DataSection.model_validate_json(cfg_json)
    if cfg.dataset.startswith("hf:"):
        return _load_hf(cfg, seed)
    if cfg.dataset.startswith(IMAGE_SOURCES):
        return _load_images(cfg, seed)
    dd, info = load_file(cfg, seed) if cfg.dataset.startswith("file:") else load_embedded(cfg, seed)
    info = with_pipeline(cfg, info, info.input_shape, pixels=_holds_pixels(dd["test"]))
    partitioner = make_partitioner(cfg.partitioner, seed)
    partitioner.dataset = dd["train"]
    _check(cfg, len(dd["train"]), info, "client" in dd["train"].column_names, partitioner)
    return FederatedData(cfg, seed, partitioner, dd["test"], info)


def _load_images(cfg: DataSection, seed: int) -> FederatedData:
    """folder: / images: datasets: file names and labels in the tables, pixels decoded per partition."""
    collection = load_collection(cfg)
    if cfg.feature_skew is not None:
        raise DataError("data.feature_skew", "adds noise to feature tables, not to images kept as pixels",
                        "remove [data.feature_skew] (augment images with [[data.transforms]])")
    n_train, n_test = len(collection.names), len(collection.test_names)
    columns = {"row": np.arange(n_train + n_test), "label": np.concatenate([collection.labels,
                                                                            collection.test_labels]),
               "name": np.array(collection.names + collection.test_names)}
    if n_test:
        dd = DatasetDict(train=make_dataset({k: v[:n_train] for k, v in columns.items()}),
                         test=make_dataset({k: v[n_train:] for k, v in columns.items()}))
    else:
        dd = split_train_test(columns, cfg.test_fraction, seed)
    classes = 0 if collection.regression else class_count(columns["label"])
    info = with_pipeline(cfg, SourceInfo(collection.shape, classes), collection.shape)
    partitioner = make_partitioner(cfg.partitioner, seed)
    partitioner.dataset = dd["train"]
    if isinstance(partitioner, ListedPartitioner):
        partitioner.root = collection.root
    _check(cfg, len(dd["train"]), info, False, partitioner)
    return FederatedData(cfg, seed, partitioner, dd["test"], info, decode=collection.decode)


def _holds_pixels(ds: Dataset) -> bool:
    """Whether a table's x column holds uint8 pixels (an image column of a hub or local table)."""
    return getattr(getattr(ds.features["x"], "feature", None), "dtype", None) == "uint8"


def with_pipeline(cfg: DataSection, info: SourceInfo, stored_shape: tuple[int, ...], pixels: bool = True
                  ) -> SourceInfo:
    """`info` with the input pipeline image data needs (decoding uint8 pixels, [[data.transforms]]); the model's
    input shape is then the pipeline's output."""
    if not pixels and not cfg.transforms:
        return info
    if len(stored_shape) != 3:
        raise DataError("data.transforms", f"transform images, but '{cfg.dataset}' has inputs of shape "
                        f"{stored_shape}", "remove [[data.transforms]], or use image data")
    channels = (cfg.images.channels if cfg.images is not None and cfg.images.channels else None) or stored_shape[0]
    if channels < stored_shape[0]:
        raise DataError("data.images.channels", f"{channels}, but the images have {stored_shape[0]}",
                        f"use channels = {stored_shape[0]}, or leave it out")
    pipeline = pipeline_for(cfg.transforms or [], stored_shape, channels)
    return SourceInfo(pipeline.output_shape, info.num_classes, pipeline)


def federated_data(cfg: DataSection, seed: int) -> FederatedData:
    """The scenario's partitions and test set, built once per (data section, seed) in this process."""
    return _cached(cfg.model_dump_json(), seed)
