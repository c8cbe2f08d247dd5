"""Datasets become datasets.Dataset splits; flwr-datasets partitioners split them; caches work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset

from fedsim.data import federated_data
from fedsim.errors import DataError
from fedsim.scenario import DataSection


def data(**kw):
    partitioner = kw.pop("partitioner", {})
    return DataSection.model_validate({"partitioner": partitioner, **kw})


def all_rows(fd):
    return torch.cat([fd.partition(i)[0] for i in range(fd.num_partitions)])


@pytest.mark.parametrize("dataset,num_partitions", [("digits", 7), ("digits", 100), ("wine", 3),
                                                    ("synthetic-images", 9)])
def test_an_iid_partition_read_as_a_slice_equals_flower_datasets_own(dataset, num_partitions, monkeypatch):
    """The IID fast path (no Dataset built per client) gives what IidPartitioner.load_partition gives, row for row,
    whether or not the partitions divide the training set evenly."""
    from fedsim.data import table_of

    fd = federated_data(data(dataset=dataset, partitioner={"name": "iid", "num_partitions": num_partitions}), 0)
    fd._cache.clear()
    with monkeypatch.context() as patch:
        patch.setattr(Dataset, "select", lambda *a, **k: pytest.fail("a Dataset was built for a partition"))
        ours = [fd.partition(pid) for pid in range(num_partitions)]
    for pid, (x, y) in enumerate(ours):
        x_flower, y_flower = fd._arrays(table_of(fd.partitioner.load_partition(pid)))
        assert np.array_equal(x.numpy(), x_flower) and np.array_equal(y.numpy(), y_flower)


@pytest.mark.parametrize("size", [300, 3000])
def test_a_natural_partition_read_directly_equals_flower_datasets_own(size, monkeypatch):
    """The natural partitioner's fast path (no Dataset built per client) gives NaturalIdPartitioner's rows."""
    from fedsim.data import table_of

    fd = federated_data(data(dataset="leaf-synthetic", generator={"n_samples": size},
                             partitioner={"name": "natural", "num_partitions": 40}), 0)
    fd._cache.clear()
    with monkeypatch.context() as patch:
        patch.setattr(Dataset, "select", lambda *a, **k: pytest.fail("a Dataset was built for a partition"))
        ours = [fd.partition(pid) for pid in range(fd.num_partitions)]
    for pid, (x, y) in enumerate(ours):
        x_flower, y_flower = fd._arrays(table_of(fd.partitioner.load_partition(pid)))
        assert np.array_equal(x.numpy(), x_flower) and np.array_equal(y.numpy(), y_flower)


@pytest.mark.parametrize("name,extra", [
    ("iid", {}), ("dirichlet", {"alpha": 0.3}), ("pathological", {"classes_per_partition": 2}),
    ("shard", {"shards_per_partition": 2}), ("linear", {}), ("square", {}), ("exponential", {}),
    ("size", {"sizes": [100, 200, 300, 400, 437]}),
])
def test_partitioners_split_the_training_set(name, extra):
    fd = federated_data(data(dataset="digits", partitioner={"name": name, "num_partitions": 5, **extra}), 0)
    sizes = [len(fd.partition(i)[1]) for i in range(5)]
    assert all(s > 0 for s in sizes)
    rows = all_rows(fd).numpy()
    assert len(np.unique(rows, axis=0)) >= len(rows) - 40  # disjoint (digits has a few duplicate images)
    assert sum(sizes) <= 1437
    if name == "size":
        assert sizes == [100, 200, 300, 400, 437]
    if name == "linear":
        assert sizes == sorted(sizes)


def test_label_skew_is_real():
    iid = federated_data(data(partitioner={"name": "iid", "num_partitions": 10}), 0).label_counts()
    skew = federated_data(data(partitioner={"name": "dirichlet", "num_partitions": 10, "alpha": 0.1}), 0).label_counts()
    spread = lambda c: (c / c.sum(1, keepdims=True)).max(1).mean()
    assert spread(skew) > 2 * spread(iid)
    patho = federated_data(data(partitioner={"name": "pathological", "num_partitions": 10}), 0).label_counts()
    assert ((patho > 0).sum(1) <= 2).all()


def test_partitions_are_cached_and_loaded_one_at_a_time():
    fd = federated_data(data(partitioner={"name": "dirichlet", "num_partitions": 8}, test_fraction=0.3), 3)
    calls = []
    original = fd._load_partition
    fd._load_partition = lambda i: calls.append(i) or original(i)
    fd.partition(5)
    fd.partition(5)
    assert calls == [5]
    assert federated_data(data(partitioner={"name": "dirichlet", "num_partitions": 8}, test_fraction=0.3), 3) is fd


def test_seeded_and_seed_dependent():
    a = federated_data(data(partitioner={"name": "dirichlet", "num_partitions": 6}), 1)
    b = federated_data(data(partitioner={"name": "dirichlet", "num_partitions": 6}, test_fraction=0.2000001), 1)
    c = federated_data(data(partitioner={"name": "dirichlet", "num_partitions": 6}), 2)
    assert torch.equal(a.partition(2)[0], b.partition(2)[0])
    assert not torch.equal(a.partition(2)[0], c.partition(2)[0])


def test_feature_skew():
    plain = federated_data(data(dataset="wine", partitioner={"num_partitions": 4}), 0)
    noisy = federated_data(data(dataset="wine", partitioner={"num_partitions": 4},
                                feature_skew={"kind": "noise", "noise_std_max": 1.0}), 0)
    diffs = [(noisy.partition(i)[0] - plain.partition(i)[0]).std().item() for i in range(4)]
    assert diffs[0] == 0 and diffs[1] < diffs[2] < diffs[3] and abs(diffs[3] - 1.0) < 0.2
    affine = federated_data(data(dataset="wine", partitioner={"num_partitions": 4},
                                 feature_skew={"kind": "affine"}), 0)
    x0, a0 = plain.partition(0)[0].double(), affine.partition(0)[0].double()
    xc, ac = x0 - x0.mean(0), a0 - a0.mean(0)
    scale = (xc * ac).sum(0) / (xc * xc).sum(0)  # per-feature least-squares fit a = scale * x + shift
    assert (ac - scale * xc).abs().max() < 1e-4 and not torch.allclose(scale, torch.ones_like(scale))
    assert torch.equal(plain.test[0], affine.test[0])  # the central test set is not skewed


def test_embedded_datasets_shapes_and_tasks():
    expect = {"digits": ((1, 8, 8), 10), "breast_cancer": ((30,), 2), "wine": ((13,), 3), "diabetes": ((10,), 0)}
    for name, (shape, classes) in expect.items():
        fd = federated_data(data(dataset=name, partitioner={"num_partitions": 3}), 0)
        assert fd.info.input_shape == shape and fd.info.num_classes == classes
        assert fd.test[1].dtype == (torch.float32 if classes == 0 else torch.int64)


def test_gaussian_regression_generator():
    fd = federated_data(data(dataset="gaussian-regression", generator={"n_samples": 5000, "n_features": 8,
                                                                        "noise_std": 0.5},
                             partitioner={"num_partitions": 2}), 0)
    x, y = torch.cat([fd.partition(i)[0] for i in range(2)]), torch.cat([fd.partition(i)[1] for i in range(2)])
    theta = torch.linalg.lstsq(x, y[:, None]).solution
    residual = (y - (x @ theta).squeeze()).std().item()
    assert abs(residual - 0.5) < 0.03 and fd.info.task == "regression"


def test_leaf_synthetic_devices_are_heterogeneous():
    cfg = data(dataset="leaf-synthetic", partitioner={"name": "natural", "num_partitions": 12},
               generator={"n_samples": 3000, "alpha": 1.0, "beta": 1.0})
    fd = federated_data(cfg, 0)
    means = torch.stack([fd.partition(i)[0].mean(0) for i in range(12)])
    assert means[:, 0].std() > 0.5  # feature means differ per device (beta)
    counts = fd.label_counts()
    assert counts.shape == (12, 10) and len(set(counts.argmax(1))) > 1  # devices favour different classes (alpha)
    sizes = counts.sum(1)
    assert sizes.max() > 3 * sizes.min()  # lognormal device sizes


def test_file_sources(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 4)).astype(np.float32), rng.integers(0, 3, 300)
    table = {f"f{j}": x[:, j] for j in range(4)} | {"label": y}
    Dataset.from_dict(table).to_parquet(tmp_path / "t.parquet")
    Dataset.from_dict(table).to_csv(tmp_path / "t.csv", index=False)
    np.savez(tmp_path / "t.npz", x=x, label=y)
    for name in ("t.parquet", "t.csv", "t.npz"):
        fd = federated_data(data(dataset=f"file:{tmp_path / name}", partitioner={"num_partitions": 3}), 0)
        assert fd.info.num_classes == 3 and fd.info.input_shape == (4,)
        assert sum(len(fd.partition(i)[1]) for i in range(3)) + len(fd.test[1]) == 300


def test_hf_loader_path_with_a_local_parquet(tmp_path):
    """`hf:` goes through flwr-datasets' FederatedDataset; a local parquet file exercises the same path."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (200, 6, 6), dtype=np.uint8)
    labels = rng.choice(["cat", "dog"], 200)
    Dataset.from_dict({"img": images.tolist(), "animal": labels.tolist()}).to_parquet(tmp_path / "d.parquet")
    cfg = data(dataset="hf:parquet", data_files=str(tmp_path / "d.parquet"), label_column="animal",
               hf_test_split="", partitioner={"name": "dirichlet", "num_partitions": 4, "alpha": 1.0,
                                              "min_partition_size": 5})
    fd = federated_data(cfg, 0)
    assert fd.info.num_classes == 2 and fd.info.input_shape == (1, 6, 6)
    x, y = fd.partition(0)
    assert x.shape[1] == 36 and float(x.max()) <= 1.0 and set(y.tolist()) <= {0, 1}
    assert sum(len(fd.partition(i)[1]) for i in range(4)) + len(fd.test[1]) == 200


def test_data_errors():
    with pytest.raises(DataError, match="regression"):
        federated_data(data(dataset="diabetes", partitioner={"name": "pathological"}), 0)
    with pytest.raises(DataError, match="natural"):
        federated_data(data(dataset="wine", partitioner={"name": "natural"}), 0)
    with pytest.raises(DataError, match="classes per partition"):
        federated_data(data(dataset="wine", partitioner={"name": "pathological", "classes_per_partition": 4}), 0)
    with pytest.raises(DataError, match="need 10 sizes"):
        federated_data(data(partitioner={"name": "size", "sizes": [1, 2]}), 0)


def test_an_empty_client_keeps_the_feature_width():
    from fedsim.data import table_arrays, table_of
    from fedsim.sources import make_dataset

    ds = make_dataset({"x": np.ones((3, 4), dtype=np.float32), "label": np.array([0, 1, 0])})
    x, y = table_arrays(table_of(ds.select([])))
    assert x.shape == (0, 4) and y.shape == (0,)
