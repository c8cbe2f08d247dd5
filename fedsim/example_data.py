"""Example data in the layouts of the papers' set-ups, generated here (nothing is downloaded), so that each shipped
set-up runs on this machine and the real data is one setting away: `fedsim example-data NAME [--out DIR]`.

Every layout is the one fedsim reads the real data in (FedLD's Retina files, a CIFAR-10 folder export, an
AgeDB-style list of face images and ages, the hub's FEMNIST and Shakespeare columns); the pixels and texts are
synthetic, with a signal a model can learn (a class's or an age's brightness pattern, a repeating text).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

LAYOUTS = {
    "retina": ("data/Retina", ("FedLD's Retina layout: labels.csv, train/ and test/ (.npy, grey), test.csv, "
                               "5_clients/split_1/client_<k>.csv")),
    "cifar10": ("data/cifar10", "a CIFAR-10 folder export: train/<class>/*.png and test/<class>/*.png, 32x32 RGB"),
    "faces": ("data/faces", "AgeDB-style faces: images/<id>_<name>_<age>.png and ages.csv (name,age), ages 1-101"),
    "femnist": ("data/femnist", ("femnist.parquet with flwrlabs/femnist's columns (image, writer_id, hsf_id, "
                                 "character)")),
    "shakespeare": ("data/shakespeare", "shakespeare.csv with flwrlabs/shakespeare's columns (character_id, x, y)"),
}


def _pattern(rng: np.random.Generator, signal: float, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 pixels: a smooth gradient whose strength grows with `signal` (in [0, 1]), plus noise."""
    h, w = shape[:2]
    ramp = np.linspace(0, 1, w)[None, :] * np.linspace(0.5, 1, h)[:, None]
    base = 40 + 170 * signal * ramp
    if len(shape) == 3:
        base = base[..., None] * np.linspace(0.7, 1.0, shape[2])
    return np.clip(base + rng.normal(0, 18, shape), 0, 255).astype(np.uint8)


def retina(root: Path, clients: int = 5, per_client: int = 24, test: int = 40, size: tuple[int, int] = (64, 64),
           seed: int = 0) -> Path:
    """Two grades (0, 1) of grey fundus-like images; each client holds its own mix of them (label skew)."""
    rng = np.random.default_rng(seed)
    for folder in ("train", "test", "5_clients/split_1"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    labels = []
    for k in range(clients):
        names = []
        share = (k + 1) / (clients + 1)  # client k's fraction of grade-1 images
        for i in range(per_client):
            name, label = f"c{k}_{i}.npy", int(rng.random() < share)
            np.save(root / "train" / name, _pattern(rng, 0.3 + 0.7 * label, size))
            labels.append((name, label))
            names.append((name, label))
        _write_csv(root / "5_clients" / "split_1" / f"client_{k + 1}.csv", names)
    tests = []
    for i in range(test):
        name, label = f"t{i}.npy", i % 2
        np.save(root / "test" / name, _pattern(rng, 0.3 + 0.7 * label, size))
        labels.append((name, label))
        tests.append((name,))
    _write_csv(root / "labels.csv", labels)
    _write_csv(root / "test.csv", tests)
    return root


def cifar10(root: Path, per_class: int = 20, test_per_class: int = 6, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for split, n in (("train", per_class), ("test", test_per_class)):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = _pattern(rng, (c + 1) / len(classes), (32, 32, 3))
                Image.fromarray(np.roll(pixels, 3 * c, axis=2 if c % 2 else 1)).save(root / split / name / f"{i}.png")
    return root


def faces(root: Path, n: int = 160, size: tuple[int, int] = (32, 32), seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        age = int(rng.integers(1, 102))
        name = f"{i}_Person{i % 37}_{age}.png"
        Image.fromarray(_pattern(rng, age / 101, (*size, 3))).save(root / "images" / name)
        rows.append((name, age))
    _write_csv(root / "ages.csv", rows)
    return root


def femnist(root: Path, writers: int = 10, per_writer: int = 16, seed: int = 0) -> Path:
    import datasets
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as ImageFeature
    from PIL import Image

    datasets.disable_progress_bars()
    rng = np.random.default_rng(seed)
    n = writers * per_writer
    characters = rng.integers(0, 62, n)
    images = [Image.fromarray(_pattern(rng, (c + 1) / 62, (28, 28))) for c in characters]
    root.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(
        {"image": images, "writer_id": [f"f{w:04d}_{w % 100:02d}" for w in range(writers) for _ in range(per_writer)],
         "hsf_id": [w % 8 for w in range(writers) for _ in range(per_writer)], "character": characters.tolist()},
        features=Features({"image": ImageFeature(), "writer_id": Value("string"), "hsf_id": Value("int64"),
                           "character": ClassLabel(names=[str(i) for i in range(62)])}),
    ).to_parquet(root / "femnist.parquet")
    return root


def shakespeare(root: Path, characters: int = 6, per_character: int = 40, seed: int = 0) -> Path:
    """Each speaking role repeats its own line; an example is 80 characters and the one after them."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    words = ["thou", "art", "the", "king", "my", "lord", "and", "what", "say", "you", "good", "night", "sweet"]
    with open(root / "shakespeare.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["character_id", "x", "y"])
        for c in range(characters):
            line = " ".join(rng.choice(words, 12)) + ". "
            text = line * (81 * per_character // len(line) + 2)
            for i in range(per_character):
                start = int(rng.integers(0, len(line)))
                writer.writerow([f"THE_TEMPEST_ROLE_{c}", text[start : start + 80], text[start + 80]])
    return root


WRITERS = {"retina": retina, "cifar10": cifar10, "faces": faces, "femnist": femnist, "shakespeare": shakespeare}


def layout_of(dataset: str) -> str | None:
    """The example layout whose usual folder a scenario's dataset reads from (e.g. images:data/Retina/...)."""
    path = Path(dataset.split(":", 1)[-1])
    return next((name for name, (folder, _) in LAYOUTS.items() if Path(folder) in (path, *path.parents)), None)


def missing_hint(dataset: str, fix: str) -> str:
    """`fix`, plus how to write example data there when the dataset reads an example layout's folder."""
    layout = layout_of(dataset)
    return f"{fix}, or write example data there: fedsim example-data {layout}" if layout else fix


def write(name: str, out: Path | None = None) -> Path:
    """The example data `name`, written to `out` (default: its layout's usual folder under the working dir)."""
    return WRITERS[name](Path(out or LAYOUTS[name][0]))


def _write_csv(path: Path, rows: list[tuple]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
