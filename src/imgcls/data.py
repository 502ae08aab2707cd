"""Image-folder data sets for training: find the splits, check every file once, and feed
decoded, transformed images to a DataLoader.

Two layouts are understood:

    DATA/train/<class>/*  [DATA/val/<class>/*]  [DATA/test/<class>/*]
    DATA/<class>/*        (validation is then a stratified, seeded split of each class)

Files that do not decode are skipped (and reported), never fatal. A class folder with no
usable image, or fewer than two classes, is a `DataError` before any training starts.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from imgcls.images import ImageError, list_images, load_image

__all__ = ["DataError", "DataSplits", "ImageFolder", "find_splits"]

Sample = tuple[Path, int]  # (image file, class index)


class DataError(ValueError):
    """A data set that cannot be trained on; the message says which folder and why."""


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


def find_splits(root: str | os.PathLike, val_split: float = 0.2, seed: int = 0) -> DataSplits:
    """Find the training, validation and test samples under `root`.

    Without a `val/` folder, `val_split` of each class's training images (at least one,
    when the class has two or more) are held out, chosen by `seed`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such data directory")
    split_root = root / "train" if (root / "train").is_dir() else root
    class_names = sorted(p.name for p in split_root.iterdir() if _is_class_dir(p))
    if len(class_names) < 2:
        raise DataError(
            f"{split_root}: found {len(class_names)} class folder(s), need at least 2 "
            "(expected DATA/<class>/* or DATA/train/<class>/*)"
        )

    skipped: list[tuple[Path, str]] = []
    train = _scan_split(split_root, class_names, skipped)
    for index, name in enumerate(class_names):
        if not any(label == index for _, label in train):
            raise DataError(f"{split_root / name}: no usable image in this class folder")
    val: list[Sample] = []
    test: list[Sample] = []
    if split_root != root:
        val = _scan_split(root / "val", class_names, skipped)
        test = _scan_split(root / "test", class_names, skipped)
    if not val and val_split > 0:
        train, val = _stratified_split(train, val_split, seed)
    return DataSplits(class_names, train, val, test, skipped)


def _is_class_dir(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".")


def _scan_split(
    split_root: Path, class_names: list[str], skipped: list[tuple[Path, str]]
) -> list[Sample]:
    """Every decodable image of the known classes under `split_root` (missing: none)."""
    if not split_root.is_dir():
        return []
    unknown = sorted(p.name for p in split_root.iterdir() if _is_class_dir(p))
    unknown = [name for name in unknown if name not in class_names]
    if unknown:
        raise DataError(f"{split_root}: class folder(s) {unknown} are not in the training set")
    candidates = [
        (path, index)
        for index, name in enumerate(class_names)
        for path in list_images(split_root / name)
    ]
    # Decoding releases the GIL in OpenCV, so threads check files in parallel.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        problems = list(pool.map(_decode_problem, (path for path, _ in candidates)))
    samples = []
    for (path, index), problem in zip(candidates, problems, strict=True):
        if problem is None:
            samples.append((path, index))
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


class ImageFolder(Dataset):
    """(image tensor 3xHxW float32, class index) for each sample, decoded with `load_image`."""

    def __init__(self, samples: list[Sample], transform: Callable[[np.ndarray], np.ndarray]):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return torch.from_numpy(self.transform(load_image(path))), label
