"""Image-folder data sets: the one reading of a data folder that training, evaluation and
the doctor share, and the decoded, transformed images a DataLoader is fed.

Two layouts are understood:

    DATA/train/<class>/*  [DATA/val/<class>/*]  [DATA/test/<class>/*]
    DATA/<class>/*        (validation is then a stratified, seeded split of each class)

`scan_dataset` reads the folders once, by these rules, and decodes nothing:

- a `train/`, `val/` or `test/` folder makes DATA the split layout; other folders beside
  them are ignored (and listed), files beside the class folders too;
- a class's images are the files under its folder, in sub-folders at any depth, whose
  extension (any case) is an image extension; symbolic links to files and class folders
  are followed, links to sub-folders inside a class are not (no loops);
- a name that starts with "." (a hidden file or folder, at any depth) is skipped.

Training then checks every file once: files that do not decode are skipped (and
reported), never fatal. A class folder with no usable image, or fewer than two classes, is
a `DataError` before any training starts.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgcls.errors import DataError
from imgcls.images import IMAGE_EXTENSIONS, ImageError, load_image

if TYPE_CHECKING:  # torch is imported where tensors are made: scanning needs none
    import torch

__all__ = [
    "SPLITS",
    "UNSPLIT",
    "DataError",
    "DataSplits",
    "DatasetLayout",
    "ImageFolder",
    "find_splits",
    "scan_dataset",
]

SPLITS = ("train", "val", "test")
UNSPLIT = "all"  # the split name of the DATA/<class>/* layout

Sample = tuple[Path, int]  # (image file, class index)
LabelledFile = tuple[Path, str]  # (image file, class name)


@dataclass
class DatasetLayout:
    """What a data folder holds, before any file is decoded: for each split, its classes
    and its (image, class) pairs. A label file (path, label, split columns) maps onto the
    same fields: `kind` then names the file's format, `classes` come from its labels."""

    root: Path
    kind: str  # "splits" (DATA/train|val|test/<class>/*) or "classes" (DATA/<class>/*)
    # split -> class folder names, sorted; empty class folders included. Splits in SPLITS
    # order; the classes layout has the one split UNSPLIT.
    classes: dict[str, list[str]]
    # split -> (image, class name), by class, then by path within a class.
    splits: dict[str, list[LabelledFile]]
    non_images: list[Path] = field(default_factory=list)  # files in class folders
    stray: list[Path] = field(default_factory=list)  # files beside the class folders
    ignored: list[Path] = field(default_factory=list)  # folders beside train/ val/ test/


@dataclass
class DataSplits:
    """The samples of each split, with class names in index order (sorted folder names)."""

    class_names: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)

    def class_counts(self) -> list[int]:
        """Training images per class, in class index order."""
        counts = [0] * len(self.class_names)
        for _, label in self.train:
            counts[label] += 1
        return counts


def scan_dataset(root: str | os.PathLike, split_names: Sequence[str] = SPLITS) -> DatasetLayout:
    """Read the folders of a data set by the rules of this module's docstring.

    `split_names`: the folder names that make DATA the split layout (`imgcls evaluate
    --split NAME` adds its own). Raises DataError when `root` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such data directory")
    folders = [p for p in _visible(root) if p.is_dir()]
    split_roots = {p.name: p for p in folders if p.name in split_names}
    if split_roots:
        kind = "splits"
        split_roots = {name: split_roots[name] for name in split_names if name in split_roots}
        ignored = [p for p in folders if p.name not in split_roots]
    else:
        kind, split_roots, ignored = "classes", {UNSPLIT: root}, []
    layout = DatasetLayout(root, kind, {}, {}, ignored=ignored)
    for split, split_root in split_roots.items():
        entries = _visible(split_root)
        class_dirs = [p for p in entries if p.is_dir()]
        layout.stray += [p for p in entries if p.is_file()]
        layout.classes[split] = [p.name for p in class_dirs]
        layout.splits[split] = []
        for class_dir in class_dirs:
            for path in _files(class_dir):
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    layout.splits[split].append((path, class_dir.name))
                else:
                    layout.non_images.append(path)
    return layout


def _visible(folder: Path) -> list[Path]:
    """The entries of `folder` whose names do not start with ".", sorted."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _files(folder: Path) -> list[Path]:
    """Every visible file under `folder`, at any depth, sorted. Like `Path.rglob`, os.walk
    does not descend into links to folders, so a link loop cannot make it endless; links
    to files are kept, broken ones dropped."""
    found = []
    for directory, subfolders, names in os.walk(folder):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in names:
            path = Path(directory, name)
            if not name.startswith(".") and path.is_file():
                found.append(path)
    return sorted(found)


def find_splits(root: str | os.PathLike, val_split: float = 0.2, seed: int = 0) -> DataSplits:
    """Find the training, validation and test samples under `root`.

    Without a `val/` folder, `val_split` of each class's training images (at least one,
    when the class has two or more) are held out, chosen by `seed`.
    """
    layout = scan_dataset(root)
    root = layout.root
    if layout.kind == "splits" and "train" not in layout.splits:
        raise DataError(
            f"{root}: has {'/, '.join(layout.splits)}/ but no train/ folder to train on"
        )
    train_split = "train" if layout.kind == "splits" else UNSPLIT
    split_root = root / "train" if layout.kind == "splits" else root
    class_names = layout.classes[train_split]
    if len(class_names) < 2:
        raise DataError(
            f"{split_root}: found {len(class_names)} class folder(s), need at least 2 "
            "(expected DATA/<class>/* or DATA/train/<class>/*)"
        )
    for split in ("val", "test"):
        unknown = [name for name in layout.classes.get(split, []) if name not in class_names]
        if unknown:
            raise DataError(
                f"{root / split}: class folder(s) {unknown} are not in the training set"
            )

    index = {name: i for i, name in enumerate(class_names)}
    skipped: list[tuple[Path, str]] = []
    train = _decodable(layout.splits[train_split], index, skipped)
    for i, name in enumerate(class_names):
        if not any(label == i for _, label in train):
            raise DataError(f"{split_root / name}: no usable image in this class folder")
    val = _decodable(layout.splits.get("val", []), index, skipped)
    test = _decodable(layout.splits.get("test", []), index, skipped)
    if not val and val_split > 0:
        train, val = _stratified_split(train, val_split, seed)
    return DataSplits(class_names, train, val, test, skipped)


def _decodable(
    files: list[LabelledFile], index: dict[str, int], skipped: list[tuple[Path, str]]
) -> list[Sample]:
    """The files that decode, as (image, class index); the others go to `skipped`."""
    # Decoding releases the GIL in OpenCV, so threads check files in parallel.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        problems = list(pool.map(_decode_problem, (path for path, _ in files)))
    samples = []
    for (path, name), problem in zip(files, problems, strict=True):
        if problem is None:
            samples.append((path, index[name]))
        else:
            skipped.append((path, problem))
    return samples


def _decode_problem(path: Path) -> str | None:
    """Why `path` cannot be used, or None when it decodes."""
    try:
        load_image(path)
    except (ImageError, OSError) as exc:
        return str(exc)
    return None


def _stratified_split(
    samples: list[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Hold out `fraction` of each class (written here: scikit-learn is not a dependency)."""
    rng = random.Random(seed)
    by_class: dict[int, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    train, val = [], []
    for label in sorted(by_class):
        items = by_class[label]
        rng.shuffle(items)
        n_val = min(max(round(len(items) * fraction), 1), len(items) - 1)
        val += items[:n_val]
        train += items[n_val:]
    return sorted(train), sorted(val)


class ImageFolder:
    """(image tensor 3xHxW float32, class index) for each sample, decoded with `load_image`:
    a map-style data set, which is all a DataLoader asks for."""

    def __init__(self, samples: list[Sample], transform: Callable[[np.ndarray], np.ndarray]):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        import torch

        path, label = self.samples[index]
        return torch.from_numpy(self.transform(load_image(path))), label
