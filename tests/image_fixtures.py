"""Image collections on disk for tests, written in the layouts fedsim reads (and the papers use)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def class_folders(root, classes=3, per_class=8, size=(6, 5), grey=(), seed=0):
    """root/<class>/<i>.png: class c's images are around grey level 40 + 60 c."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        for i in range(per_class):
            shape = size if c in grey else (*size, 3)
            write_png(root / f"class{c}" / f"{i}.png", (rng.integers(0, 30, shape) + 40 + 60 * c).astype(np.uint8))


def retina(root, clients=3, per_client=6, test=6, size=(8, 8)):
    """FedLD's layout: labels.csv (name,label; no header), train/ and test/ images (.npy, grey), test.csv, and
    5_clients/split_1/client_<k>.csv listing each client's names."""
    rng = np.random.default_rng(1)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "5_clients" / "split_1").mkdir(parents=True)
    labels = []
    for k in range(clients):
        names = []
        for i in range(per_client):
            name = f"c{k}_{i}.npy"
            label = (k + i) % 2
            np.save(root / "train" / name, (rng.random(size) * 0.3 + 0.5 * label).astype(np.float32))
            labels.append(f"{name},{label}")
            names.append(f"{name},{label}")
        (root / "5_clients" / "split_1" / f"client_{k}.csv").write_text("\n".join(names) + "\n")
    tests = []
    for i in range(test):
        name = f"t{i}.npy"
        np.save(root / "test" / name, (rng.random(size) * 0.3 + 0.5 * (i % 2)).astype(np.float32))
        labels.append(f"{name},{i % 2}")
        tests.append(name)
    (root / "labels.csv").write_text("\n".join(labels) + "\n")
    (root / "test.csv").write_text("\n".join(tests) + "\n")
    return root


