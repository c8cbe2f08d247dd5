"""The FL literature's hub datasets (they cannot be downloaded here): each loader on a small local file written with
the hub dataset's own column names and types, through the same `hf:` path (flwr-datasets' FederatedDataset)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

import fedsim
from fedsim.data import federated_data
from fedsim.errors import DataError
from fedsim.models.leaf import VOCABULARY
from fedsim.scenario import DataSection
from fedsim.server import prepare

RNG = np.random.default_rng(0)


def images(n, shape):
    return [Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8)) for _ in range(n)]


def femnist(path, writers=4, per_writer=6):
    """flwrlabs/femnist: image (28x28 grey), writer_id (string), hsf_id (int64), character (ClassLabel, 62)."""
    n = writers * per_writer
    Dataset.from_dict(
        {"image": images(n, (28, 28)), "writer_id": [f"f{w:04d}_14" for w in range(writers) for _ in range(per_writer)],
         "hsf_id": [0] * n, "character": RNG.integers(0, 62, n).tolist()},
        features=Features({"image": ImageFeature(), "writer_id": Value("string"), "hsf_id": Value("int64"),
                           "character": ClassLabel(names=[str(i) for i in range(62)])})).to_parquet(path)


def cifar(path, n=24, hundred=False):
    """uoft-cs/cifar10: img (32x32 RGB), label (ClassLabel, 10); cifar100: img, fine_label (100), coarse_label (20)."""
    labels = {"fine_label": RNG.integers(0, 100, n).tolist(), "coarse_label": RNG.integers(0, 20, n).tolist()} \
        if hundred else {"label": RNG.integers(0, 10, n).tolist()}
    kinds = {"fine_label": ClassLabel(num_classes=100), "coarse_label": ClassLabel(num_classes=20)} if hundred \
        else {"label": ClassLabel(num_classes=10)}
    Dataset.from_dict({"img": images(n, (32, 32, 3)), **labels},
                      features=Features({"img": ImageFeature(), **kinds})).to_parquet(path)


def shakespeare(path, characters=3, per_character=8):
    """flwrlabs/shakespeare (a CSV): character_id, x (the 80 previous characters), y (the next one)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["character_id", "x", "y"])
        for c in range(characters):
            for _ in range(per_character):
                text = "".join(RNG.choice(list(VOCABULARY[26:52]), 81))  # letters: the CSV keeps them strings
                writer.writerow([f"THE_TEMPEST_ROLE{c}", text[:80], text[80]])


def hub(path, **data):
    return {"dataset": f"hf:{path.suffix[1:]}", "data_files": str(path), "hf_test_split": "", "test_fraction": 0.25,
            **data}


def test_femnist_writers_as_clients_with_uint8_pixels(tmp_path):
    femnist(tmp_path / "femnist.parquet")
    cfg = DataSection(**hub(tmp_path / "femnist.parquet", label_column="character", feature_columns=["image"],
                            partitioner={"name": "natural", "column": "writer_id", "num_partitions": 4}))
    data = federated_data(cfg, 0)
    assert data.info.input_shape == (1, 28, 28) and data.info.num_classes == 62  # the ClassLabel's 62
    x, _ = data.partition(0)
    assert x.dtype == torch.uint8 and x.shape[1] == 784
    assert sum(len(data.partition(i)[1]) for i in range(4)) == 18  # every training example has its writer's client
    with pytest.raises(DataError, match="num_partitions: 5, but column 'writer_id' has 4 values"):
        federated_data(cfg.model_copy(update={"partitioner": cfg.partitioner.model_copy(update={"num_partitions": 5})}),
                       0)


def test_femnist_trains_with_leaf_s_cnn(tmp_path):
    femnist(tmp_path / "femnist.parquet")
    scenario = fedsim.Scenario.from_dict({
        "run": {"rounds": 1}, "model": {"name": "femnist-cnn"}, "client": {"batch_size": 8},
        "data": hub(tmp_path / "femnist.parquet", label_column="character", feature_columns=["image"],
                    partitioner={"name": "natural", "column": "writer_id", "num_partitions": 4})})
    result = fedsim.run(scenario, out=tmp_path / "run")
    assert result.metrics[0]["replies"] == 4


@pytest.mark.parametrize(("hundred", "label", "classes"), [(False, "label", 10), (True, "fine_label", 100)])
def test_cifar_layouts(tmp_path, hundred, label, classes):
    cifar(tmp_path / "cifar.parquet", hundred=hundred)
    prepared = prepare(fedsim.Scenario.from_dict({
        "model": {"name": "resnet18", "norm": "group"},
        "data": hub(tmp_path / "cifar.parquet", label_column=label, feature_columns=["img"],
                    partitioner={"num_partitions": 3})}))
    assert prepared.data.info.input_shape == (3, 32, 32) and prepared.data.info.num_classes == classes
    assert prepared.data.test[0].dtype == torch.uint8


def test_shakespeare_characters_as_clients_next_character_prediction(tmp_path):
    shakespeare(tmp_path / "shakespeare.csv")
    scenario = fedsim.Scenario.from_dict({
        "run": {"rounds": 1}, "model": {"name": "char-lstm"}, "client": {"batch_size": 4},
        "data": hub(tmp_path / "shakespeare.csv", label_column="y", feature_columns=["x"],
                    vocabulary="leaf-shakespeare",
                    partitioner={"name": "natural", "column": "character_id", "num_partitions": 3})})
    data = federated_data(scenario.data, 0)
    assert data.info.input_shape == (80,) and data.info.num_classes == len(VOCABULARY)
    x, y = data.partition(0)
    with open(tmp_path / "shakespeare.csv") as fh:
        rows = {r["x"]: r["y"] for r in csv.DictReader(fh)}
    first = "".join(VOCABULARY[int(i)] for i in x[0])
    assert first in rows and VOCABULARY[int(y[0])] == rows[first]  # indices decode back to the text
    result = fedsim.run(scenario, out=tmp_path / "run")
    assert set(result.metrics[0]["eval"]) == {"accuracy", "loss"}
