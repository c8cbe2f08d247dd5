"""Image collections on disk: `folder:PATH` (one subfolder per class) and `images:LABELS.csv` (a CSV of image names
and labels, FedLD's layout). Files: PNG, JPEG (decoded with Pillow) and NPY ((H, W), (H, W, C) or (C, H, W)).

Every file is checked before training (it exists; its header gives a size and channels that match the others, or
`[data.images] size` resizes it), and decoded once, when its partition is first loaded, into uint8 (C, H, W)
pixels (float NPY arrays in [0, 1] are scaled by 255). Grey and colour images mixed become colour (grey repeated);
alpha is dropped. A missing, undecodable or odd-sized file is one line naming it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.errors import DataError
from fedsim.example_data import missing_hint
from fedsim.scenario import DataSection, ImagesSection

SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")


@dataclass
class Collection:
    """The images of a dataset: files, labels and names (what listed partitions call them), train and test."""

    root: Path  # the dataset's folder: listed partition files are relative to it
    folder: Path  # where the training images' names are
    names: list[str]  # training images, relative to `folder` (a collection has many: no Path object each)
    labels: np.ndarray
    test_folder: Path
    test_names: list[str]
    test_labels: np.ndarray
    shape: tuple[int, int, int]  # stored (C, H, W)
    regression: bool
    resize: tuple[int, int] | None = None

    def file(self, row: int) -> Path:
        """Row `row` of the training images followed by the test images."""
        n = len(self.names)
        return self.folder / self.names[row] if row < n else self.test_folder / self.test_names[row - n]

    def decode(self, rows: np.ndarray) -> np.ndarray:
        """uint8 pixels of `rows` (as `file` numbers them), (n, C * H * W)."""
        out = np.empty((len(rows), int(np.prod(self.shape))), dtype=np.uint8)
        for i, row in enumerate(rows):
            out[i] = pixels(self.file(int(row)), self.shape[0], self.resize).reshape(-1)
        return out


def _error(file: Path, what: str, fix: str) -> DataError:
    return DataError(f"data.dataset: {file}", what, fix)


def header(file: Path) -> tuple[int, int, int]:
    """(channels, height, width) from the file's header, without decoding the pixels."""
    if not file.is_file():
        raise _error(file, "file not found", "restore it, or remove it from the list")
    try:
        if file.suffix.lower() == ".npy":
            shape = np.load(file, mmap_mode="r", allow_pickle=False).shape
            return _npy_layout(file, shape)[0]
        from PIL import Image

        with Image.open(file) as image:
            width, height = image.size
            return (1 if image.mode in ("L", "LA", "I", "I;16", "F", "1") else 3), height, width
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
        raise _error(file, f"cannot read the image: {type(exc).__name__}: {exc}", "replace or remove the file") \
            from None


def _npy_layout(file: Path, shape: tuple[int, ...]) -> tuple[tuple[int, int, int], str]:
    """(C, H, W) and the array's layout ('hw', 'hwc' or 'chw')."""
    if len(shape) == 2:
        return (1, *shape), "hw"
    if len(shape) == 3 and shape[-1] in (1, 3, 4):
        return (min(shape[-1], 3), shape[0], shape[1]), "hwc"
    if len(shape) == 3 and shape[0] in (1, 3, 4):
        return (min(shape[0], 3), shape[1], shape[2]), "chw"
    raise _error(file, f"an array of shape {shape} is not an image", "save (H, W), (H, W, C) or (C, H, W) arrays")


def pixels(file: Path, channels: int, resize: tuple[int, int] | None) -> np.ndarray:
    """The file's pixels as uint8 (channels, H, W), resized (bilinear) to `resize` = (h, w) if given."""
    from PIL import Image

    try:
        if file.suffix.lower() == ".npy":
            array = np.load(file, allow_pickle=False)
            (_, _, _), layout = _npy_layout(file, array.shape)
            array = array.transpose(1, 2, 0) if layout == "chw" else array
            if array.dtype.kind == "f":
                array = array * 255.0 if array.max(initial=0.0) <= 1.0 else array
                array = np.clip(np.rint(array), 0, 255)
            array = array.astype(np.uint8)
            image = Image.fromarray(array[..., :3] if array.ndim == 3 and array.shape[-1] > 1 else
                                    array.reshape(array.shape[0], array.shape[1]))
        else:
            image = Image.open(file)
            image.load()
        image = image.convert("L" if channels == 1 else "RGB")
        if resize is not None and image.size != (resize[1], resize[0]):
            image = image.resize((resize[1], resize[0]), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _error(file, f"cannot decode the image: {type(exc).__name__}: {exc}", "replace or remove the file") \
            from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def check_shapes(files, resize: tuple[int, int] | None) -> tuple[int, int, int]:
    """The collection's stored (C, H, W): every header (of the Paths `files` yields) must agree on (H, W) unless
    images are resized."""
    channels, size, first = 1, None, None
    for file in files:
        c, h, w = header(file)
        channels = max(channels, c)
        if resize is None:
            if size is None:
                size, first = (h, w), file
            elif (h, w) != size:
                raise _error(file, f"is {h}x{w} but {first.name} is {size[0]}x{size[1]}",
                             "set [data.images] size = [height, width] to resize every image")
    height, width = resize if resize is not None else size
    return channels, height, width


def _class_files(folder: Path) -> tuple[list[str], list[int], list[str]]:
    """(names relative to `folder`, labels, class names) of folder/<class>/<image>."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"data.dataset: folder:{folder}", "has no class subfolders",
                        "put each class's images in a subfolder named after it")
    names, labels = [], []
    for index, name in enumerate(classes):
        for file in sorted((folder / name).iterdir()):
            if file.name.startswith(".") or file.is_dir():
                continue
            if file.suffix.lower() not in SUFFIXES:
                raise _error(file, f"is not an image ({', '.join(SUFFIXES)})", "remove it from the class folder")
            names.append(f"{name}/{file.name}")
            labels.append(index)
    return names, labels, classes


def from_folder(cfg: DataSection) -> Collection:
    """folder:PATH: PATH/<class>/<image>; with PATH/train and PATH/test, those are the splits."""
    root = Path(cfg.dataset.split(":", 1)[1])
    if not root.is_dir():
        raise DataError(f"data.dataset: {cfg.dataset}", "no such folder", missing_hint(cfg.dataset, "check the path"))
    split = (root / "train").is_dir() and (root / "test").is_dir()
    folder = root / "train" if split else root
    names, labels, classes = _class_files(folder)
    test_names, test_labels = [], []
    if split:
        test_names, test_labels, test_classes = _class_files(root / "test")
        if test_classes != classes:
            raise DataError(f"data.dataset: {cfg.dataset}", f"test/ has classes {test_classes} but train/ has "
                            f"{classes}", "give both the same class folders")
    return _collection(cfg, root, folder, names, np.array(labels), root / "test", test_names,
                       np.array(test_labels), False)


def _read_csv(path: Path, image_column: str | None, label_column: str | None) -> tuple[list[str], list[str]]:
    """(names, labels) of a CSV with or without a header (without one: name, then label)."""
    if not path.is_file():
        raise DataError(f"data.dataset: {path}", "file not found", missing_hint(str(path), "check the path"))
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r]
    if not rows:
        raise DataError(f"data.dataset: {path}", "is empty", "list one image name (and label) per line")
    first = rows[0]
    has_header = len(first) > 1 and not _number(first[1])
    if has_header:
        names_at = first.index(image_column) if image_column in first else 0
        if label_column not in first and len(first) > 1:
            raise DataError("data.label_column", f"no column '{label_column}' in {path} (columns: "
                            f"{', '.join(first)})", "set data.label_column to the label's column")
        label_at = first.index(label_column) if label_column in first else None
        rows = rows[1:]
    else:
        names_at, label_at = 0, 1 if len(first) > 1 else None
    names = [r[names_at].strip() for r in rows]
    labels = [r[label_at].strip() for r in rows] if label_at is not None else []
    return names, labels


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def from_csv(cfg: DataSection) -> Collection:
    """images:LABELS.csv: names and labels; images in [data.images] folder (default: the CSV's folder); the
    test examples are test_list's names (found in test_folder), the rest train."""
    settings = cfg.images or ImagesSection()
    labels_csv = Path(cfg.dataset.split(":", 1)[1])
    root = labels_csv.parent
    names, raw = _read_csv(labels_csv, settings.image_column, cfg.label_column)
    if not raw:
        raise DataError(f"data.dataset: {labels_csv}", "has no label column", "write name,label lines")
    duplicated = next((n for n, c in zip(*np.unique(names, return_counts=True), strict=True) if c > 1), None)
    if duplicated is not None:
        raise DataError(f"data.dataset: {labels_csv}", f"lists '{duplicated}' more than once",
                        "give every image one label")
    numbers = all(_number(v) for v in raw)
    regression = cfg.task == "regression" or cfg.task == "auto" and numbers and any("." in v or "e" in v.lower()
                                                                                     for v in raw)
    if regression and not numbers:
        raise DataError("data.task", f"'regression' needs numeric labels but {labels_csv.name} has "
                        f"'{next(v for v in raw if not _number(v))}'", "use task = 'classification'")
    if numbers:
        values = np.array([float(v) for v in raw])
        labels = values.astype(np.float32) if regression else values.astype(np.int64)
    else:
        index = {c: i for i, c in enumerate(sorted(set(raw)))}
        labels = np.array([index[v] for v in raw], dtype=np.int64)
    label_of = dict(zip(names, labels, strict=True))
    folder = root / settings.folder if settings.folder else root
    test_names: list[str] = []
    if settings.test_list:
        test_names, _ = _read_csv(root / settings.test_list, settings.image_column, cfg.label_column)
        unknown = next((n for n in test_names if n not in label_of), None)
        if unknown is not None:
            raise DataError(f"data.images.test_list: {settings.test_list}", f"names '{unknown}', which "
                            f"{labels_csv.name} does not label", "label every test image in the labels CSV")
    test_folder = root / settings.test_folder if settings.test_folder else folder
    held_out = set(test_names)
    train = [n for n in names if n not in held_out]
    return _collection(cfg, root, folder, train, np.array([label_of[n] for n in train]), test_folder, test_names,
                       np.array([label_of[n] for n in test_names]), regression)


def _collection(cfg: DataSection, root: Path, folder: Path, names: list[str], labels: np.ndarray,
                test_folder: Path, test_names: list[str], test_labels: np.ndarray, regression: bool) -> Collection:
    settings = cfg.images or ImagesSection()
    resize = tuple(settings.size) if settings.size else None
    shape = check_shapes((*(folder / n for n in names), *(test_folder / n for n in test_names)), resize)
    return Collection(root, folder, names, labels, test_folder, test_names, test_labels, shape, regression, resize)


def load_collection(cfg: DataSection) -> Collection:
    return from_folder(cfg) if cfg.dataset.startswith("folder:") else from_csv(cfg)
