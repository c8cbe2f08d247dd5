"""Images on disk: a folder of class folders, FedLD's CSV layout, fixed client splits; pixels kept as uint8."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from image_fixtures import class_folders, retina, write_png
from PIL import Image

import fedsim
from fedsim.data import federated_data
from fedsim.errors import DataError
from fedsim.scenario import DataSection, ImagesSection


def retina_data(root, **partitioner) -> DataSection:
    return DataSection(dataset=f"images:{root / 'labels.csv'}",
                       images={"folder": "train", "test_list": "test.csv", "test_folder": "test", "channels": 3},
                       partitioner={"name": "listed", "num_partitions": 3, "files": "5_clients/split_1/*",
                                    **partitioner})


def test_a_folder_of_class_folders_is_a_dataset_of_uint8_pixels(tmp_path):
    class_folders(tmp_path / "imgs", grey=(1,))  # one class grey, two in colour: all become colour
    data = federated_data(DataSection(dataset=f"folder:{tmp_path / 'imgs'}", test_fraction=0.25,
                                      partitioner={"num_partitions": 2}), 0)
    assert data.info.input_shape == (3, 6, 5) and data.info.num_classes == 3
    x, _ = data.partition(0)
    assert x.dtype == torch.uint8 and x.shape[1] == 3 * 6 * 5 and len(data.test[0]) == 6
    grey = np.asarray(Image.open(tmp_path / "imgs" / "class1" / "0.png"))
    everything = torch.cat([data.partition(0)[0], data.partition(1)[0], data.test[0]])
    assert any(torch.equal(row.view(3, 6, 5), torch.from_numpy(np.stack([grey] * 3))) for row in everything)


def test_train_and_test_folders_are_the_splits(tmp_path):
    class_folders(tmp_path / "imgs" / "train", per_class=4)
    class_folders(tmp_path / "imgs" / "test", per_class=2, seed=1)
    data = federated_data(DataSection(dataset=f"folder:{tmp_path / 'imgs'}", partitioner={"num_partitions": 2}), 0)
    assert len(data.test[1]) == 6 and sorted(data.test[1].tolist()) == [0, 0, 1, 1, 2, 2]


def test_fedld_layout_with_listed_clients(tmp_path):
    root = retina(tmp_path / "Retina")
    data = federated_data(retina_data(root), 0)
    assert data.info.input_shape == (3, 8, 8)  # grey stored once, broadcast to three channels per batch
    assert data.partition(0)[0].shape == (6, 64)  # stored grey
    for k in range(3):  # client k is exactly the examples its file lists, in the file's order
        x, y = data.partition(k)
        expected = [np.rint(np.load(root / "train" / f"c{k}_{i}.npy") * 255).astype(np.uint8) for i in range(6)]
        assert [row.view(8, 8).numpy().tolist() for row in x] == [e.tolist() for e in expected]
        assert y.tolist() == [(k + i) % 2 for i in range(6)]
    assert len(data.test[0]) == 6


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: (r / "5_clients/split_1/client_2.csv").write_text("c0_1.npy,1\n"), ("lists 'c0_1.npy', which "
                                                                                    "client_0.csv already lists")),
    (lambda r: (r / "5_clients/split_1/client_2.csv").write_text("c2_0.npy\nc2_0.npy\n"), "which it already lists"),
    (lambda r: (r / "5_clients/split_1/client_2.csv").write_text("nope.npy\n"), "lists 'nope.npy', which is not"),
    (lambda r: (r / "5_clients/split_1/client_3.csv").write_text("t0.npy\n"), "num_partitions: 3, but files"),
    (lambda r: (r / "train" / "c1_2.npy").unlink(), r"c1_2.npy: file not found"),
    (lambda r: (r / "train" / "c1_3.npy").write_bytes(b"not an array"), r"c1_3.npy: cannot read the image"),
    (lambda r: np.save(r / "train" / "c2_1.npy", np.zeros((9, 8))), r"c2_1.npy: is 9x8 but c0_0.npy is 8x8"),
])
def test_bad_files_and_splits_are_one_line_naming_them(tmp_path, change, message):
    root = retina(tmp_path / "Retina")
    change(root)
    with pytest.raises(DataError, match=message):
        data = federated_data(retina_data(root), 0)
        data.partition(0)


def test_mixed_sizes_are_resized_when_asked(tmp_path):
    class_folders(tmp_path / "imgs", per_class=3)
    write_png(tmp_path / "imgs" / "class0" / "big.png", np.zeros((12, 10, 3), dtype=np.uint8))
    cfg = DataSection(dataset=f"folder:{tmp_path / 'imgs'}", partitioner={"num_partitions": 2}, test_fraction=0.5)
    with pytest.raises(DataError, match="big.png: is 12x10 but 0.png is 6x5"):
        federated_data(cfg, 0)
    data = federated_data(cfg.model_copy(update={"images": ImagesSection(size=[4, 4])}), 0)
    assert data.info.input_shape == (3, 4, 4)


def test_a_run_on_images_from_disk(tmp_path):
    root = retina(tmp_path / "Retina")
    scenario = fedsim.Scenario.from_dict({"run": {"rounds": 2}, "data": retina_data(root).model_dump(exclude_none=True),
                                          "model": {"name": "resnet18", "norm": "group"},
                                          "client": {"batch_size": 4}})
    result = fedsim.run(scenario, out=tmp_path / "run")
    assert len(result.metrics) == 2 and result.metrics[-1]["replies"] == 3


@pytest.mark.slow
def test_fifty_thousand_cifar_sized_images_cost_their_uint8_size_plus_under_30_percent(tmp_path):
    """benchmarks/image_memory.py in a fresh process: resident memory after every partition and the test set
    are loaded, against the pixels' uint8 size (50,000 x 32 x 32 x 3 = 153.6 MB)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        folder = tmp_path / "cifar" / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png", compress_level=1)
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "image_memory.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "cifar")], capture_output=True, text=True,
                         check=True, timeout=600)
    measured = json.loads(out.stdout)
    assert measured["images"] == 50_000 and measured["uint8_bytes"] == pixels.nbytes
    assert measured["ratio"] <= 1.3, measured
