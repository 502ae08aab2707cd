"""Data sets: the one reading of a data folder or label file that training, evaluation,
features and the doctor share, and the decoded, transformed images a DataLoader is fed.

Three layouts are understood:

    DATA/train/<class>/*  [DATA/val/<class>/*]  [DATA/test/<class>/*]
    DATA/<class>/*        (validation is then a stratified, seeded split of each class)
    LABELS.csv | LABELS.jsonl   path, label(s) [, split] per image (`imgcls.data.label_files`)

`scan_dataset` reads either into one table, a `DatasetLayout`: for each split, every
image with its labels. The folders are read once, by these rules, and nothing is decoded:

- a `train/`, `val/` or `test/` folder makes DATA the split layout; other folders beside
  them are ignored (and listed), files beside the class folders too;
- a class's images are the files under its folder, in sub-folders at any depth, whose
  extension (any case) is an image extension; symbolic links to files and class folders
  are followed, links to sub-folders inside a class are not (no loops);
- a name that starts with "." (a hidden file or folder, at any depth) is skipped.
- with `nested` (a run trained with `--taxonomy folders`), class folders sit one level
  deeper, `DATA/train/<parent>/<class>/*`; the parent folders make the class taxonomy.

A folder gives each image one label; a label file may give several, and a data set with
any such image is multi-label (`DataSplits.multi_label`). Training then checks every file
once: files that do not decode are skipped (and reported), never fatal. A class with no
usable image, or fewer than two classes, is a `DataError` before any training starts.
"""

from __future__ import annotations

import functools
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgcls.data.images import IMAGE_EXTENSIONS, decode_workers, load_image
from imgcls.data.label_files import is_label_file, read_label_file
from imgcls.errors import DataError, ImageError

if TYPE_CHECKING:  # torch is imported where tensors are made: scanning needs none
    import torch

__all__ = [
    "SPLITS",
    "UNSPLIT",
    "DataSplits",
    "DatasetLayout",
    "ImageFolder",
    "find_splits",
    "multi_hot",
    "relative_path",
    "scan_dataset",
]

SPLITS = ("train", "val", "test")
UNSPLIT = "all"  # the split name of the DATA/<class>/* layout

# (image file, class index); a multi-label data set's samples hold a tuple of indices.
Sample = tuple[Path, int | tuple[int, ...]]
LabelledFile = tuple[Path, tuple[str, ...]]  # (image file, its class names)


@dataclass
class DatasetLayout:
    """What a data set holds, before any file is decoded: for each split, its classes and
    its (image, class names) rows. Class folders give every image one name; a label file
    (`label_file`) may give several."""

    root: Path  # the data folder; for a label file, its folder (relative paths start there)
    # "splits" (DATA/train|val|test/<class>/*, or a label file with a split column) or
    # "classes" (DATA/<class>/*, or a label file without one)
    kind: str
    # split -> class names, sorted; empty class folders included. Splits in SPLITS order;
    # the classes layout has the one split UNSPLIT.
    classes: dict[str, list[str]]
    # split -> (image, class names), by class names, then by path.
    splits: dict[str, list[LabelledFile]]
    non_images: list[Path] = field(default_factory=list)  # files in class folders
    stray: list[Path] = field(default_factory=list)  # files beside the class folders
    ignored: list[Path] = field(default_factory=list)  # folders beside train/ val/ test/
    label_file: Path | None = None  # the CSV or JSON Lines file the rows come from
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # missing (skip_missing)
    # Nested class folders (DATA/train/<parent>/<class>/*): each class's parent folder.
    parents: dict[str, str] = field(default_factory=dict)

    @property
    def multi_label(self) -> bool:
        """Whether any image carries more than one label."""
        return any(len(names) > 1 for rows in self.splits.values() for _, names in rows)

    def relative(self, path: Path) -> str:
        return relative_path(path, self.root)

    def where(self, split: str) -> Path | str:
        """Where a split's images are listed, for messages: its folder, or the label file
        and the split's rows."""
        if self.label_file is not None:
            return f"{self.label_file} ({split} rows)" if self.kind == "splits" else self.label_file
        return self.root / split if self.kind == "splits" else self.root


@dataclass
class DataSplits:
    """The samples of each split, with class names in index order (sorted folder names)."""

    class_names: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)
    multi_label: bool = False  # samples hold tuples of class indices
    parents: dict[str, str] = field(default_factory=dict)  # class -> parent (a taxonomy)

    @property
    def targets_size(self) -> int | None:
        """The length of an image's multi-hot target (`ImageFolder`'s `num_classes`), or
        None when targets are class indices."""
        return len(self.class_names) if self.multi_label else None

    def class_counts(self) -> list[int]:
        """Training images per class, in class index order."""
        counts = [0] * len(self.class_names)
        for _, label in self.train:
            for index in label if self.multi_label else (label,):
                counts[index] += 1
        return counts


def scan_dataset(
    root: str | os.PathLike,
    split_names: Sequence[str] = SPLITS,
    *,
    label_delim: str | None = None,
    skip_missing: bool = False,
    nested: bool = False,
) -> DatasetLayout:
    """Read the folders or the label file of a data set by the rules of this module's
    docstring. `nested`: class folders sit one level deeper, in parent folders
    (DATA/train/red/hearts/*), whose names make the layout's `parents`.

    `split_names`: the folder names (or `split` values) that make DATA the split layout
    (`imgcls evaluate --split NAME` adds its own). `label_delim` and `skip_missing`: see
    `imgcls.data.label_files.read_label_file`. Raises DataError when `root` is neither a
    directory nor a label file (LabelFileError for a label file's bad rows).
    """
    root = Path(root)
    if is_label_file(root) and not root.is_dir():
        return _label_file_layout(root, split_names, label_delim, skip_missing)
    if not root.is_dir():
        raise DataError(f"{root}: no such data directory (or .csv / .jsonl label file)")
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
        if nested:
            class_dirs = _nested_class_dirs(class_dirs, layout)
        layout.classes[split] = [p.name for p in class_dirs]
        layout.splits[split] = []
        for class_dir in class_dirs:
            for path in _files(class_dir):
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    layout.splits[split].append((path, (class_dir.name,)))
                else:
                    layout.non_images.append(path)
    return layout


def _nested_class_dirs(parent_dirs: list[Path], layout: DatasetLayout) -> list[Path]:
    """The class folders inside `parent_dirs`, by name, each parent noted in
    `layout.parents` (files beside them go to `layout.stray`). DataError when two parents
    hold a class of the same name."""
    class_dirs: dict[str, Path] = {}
    for parent in parent_dirs:
        entries = _visible(parent)
        layout.stray += [p for p in entries if p.is_file()]
        for folder in (p for p in entries if p.is_dir()):
            if class_dirs.setdefault(folder.name, folder) != folder:
                raise DataError(
                    f"{folder} and {class_dirs[folder.name]}: two class folders named "
                    f"{folder.name!r}; nested class names must be unique"
                )
            layout.parents[folder.name] = parent.name
    return [class_dirs[name] for name in sorted(class_dirs)]


def _label_file_layout(
    path: Path, split_names: Sequence[str], label_delim: str | None, skip_missing: bool
) -> DatasetLayout:
    """The table of a label file: its rows in the folder scanner's order (by labels, then
    path), so that a file listing a folder's images gives the same table as the folder."""
    table = read_label_file(path, split_names, label_delim, skip_missing)
    by_split: dict[str, list[LabelledFile]] = {}
    for row in sorted(table.rows, key=lambda row: (row.labels, row.path)):
        by_split.setdefault(row.split or UNSPLIT, []).append((row.path, row.labels))
    splits = {name: by_split[name] for name in (*split_names, UNSPLIT) if name in by_split}
    return DatasetLayout(
        root=path.parent,
        kind="splits" if table.has_split else "classes",
        classes={
            name: sorted({c for _, names in rows for c in names}) for name, rows in splits.items()
        },
        splits=splits,
        label_file=path,
        skipped=[(row.path, f"{path} row {row.row}: no such file") for row in table.missing],
    )


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


def relative_path(path: Path, root: Path) -> str:
    """`path` as reports name it: relative to the data folder `root` (POSIX), or whole when
    a label file lists it outside its folder."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def find_splits(
    root: str | os.PathLike,
    val_split: float = 0.2,
    seed: int = 0,
    *,
    multi_label: bool = False,
    label_delim: str | None = None,
    skip_missing: bool = False,
    nested: bool = False,
) -> DataSplits:
    """Find the training, validation and test samples of the data folder or label file
    `root`.

    Without validation images, `val_split` of each class's training images (at least one,
    when the class has two or more) are held out, chosen by `seed`; a multi-label image
    counts for its rarest class. The samples hold tuples of class indices when an image
    has several labels or `multi_label` is set.
    """
    layout = scan_dataset(root, label_delim=label_delim, skip_missing=skip_missing, nested=nested)
    if layout.kind == "splits" and "train" not in layout.splits:
        raise DataError(
            f"{layout.label_file}: has {', '.join(layout.splits)} rows but no train rows to "
            "train on"
            if layout.label_file
            else f"{layout.root}: has {'/, '.join(layout.splits)}/ but no train/ folder to train on"
        )
    train_split = "train" if layout.kind == "splits" else UNSPLIT
    class_names = layout.classes[train_split]
    if len(class_names) < 2:
        raise DataError(
            f"{layout.where(train_split)}: found {len(class_names)} class(es), need at least 2"
            + ("" if layout.label_file else " (expected DATA/<class>/* or DATA/train/<class>/*)")
        )
    for split in ("val", "test"):
        unknown = [name for name in layout.classes.get(split, []) if name not in class_names]
        if unknown:
            what = "label(s)" if layout.label_file else "class folder(s)"
            raise DataError(f"{layout.where(split)}: {what} {unknown} are not in the training set")

    multi_label = multi_label or layout.multi_label
    index = {name: i for i, name in enumerate(class_names)}
    skipped: list[tuple[Path, str]] = list(layout.skipped)
    decodable = functools.partial(_decodable, index=index, skipped=skipped, multi_label=multi_label)
    train = decodable(layout.splits[train_split])
    used = {i for _, label in train for i in (label if multi_label else (label,))}
    for i, name in enumerate(class_names):
        if i not in used:
            raise DataError(
                f"{layout.label_file}: no usable training image of class {name!r}"
                if layout.label_file
                else f"{layout.where(train_split) / name}: no usable image in this class folder"
            )
    val = decodable(layout.splits.get("val", []))
    test = decodable(layout.splits.get("test", []))
    if not val and val_split > 0:
        train, val = _stratified_split(train, val_split, seed, multi_label)
    return DataSplits(class_names, train, val, test, skipped, multi_label, layout.parents)


def _decodable(
    files: list[LabelledFile],
    index: dict[str, int],
    skipped: list[tuple[Path, str]],
    multi_label: bool,
) -> list[Sample]:
    """The files that decode, as (image, class index or indices); the others go to
    `skipped`."""
    # Decoding releases the GIL in OpenCV, so threads check files in parallel.
    with ThreadPoolExecutor(decode_workers()) as pool:
        problems = list(pool.map(_decode_problem, (path for path, _ in files)))
    samples: list[Sample] = []
    for (path, names), problem in zip(files, problems, strict=True):
        if problem is not None:
            skipped.append((path, problem))
        elif multi_label:
            samples.append((path, tuple(sorted(index[name] for name in names))))
        else:
            samples.append((path, index[names[0]]))
    return samples


def _decode_problem(path: Path) -> str | None:
    """Why `path` cannot be used, or None when it decodes."""
    try:
        load_image(path)
    except (ImageError, OSError) as exc:
        return str(exc)
    return None


def _stratified_split(
    samples: list[Sample], fraction: float, seed: int, multi_label: bool = False
) -> tuple[list[Sample], list[Sample]]:
    """Hold out `fraction` of each class (written here: scikit-learn is not a dependency).
    A multi-label image belongs to its rarest class for this, the cheap form of iterative
    stratification (Sechidis et al., 2011): rare classes get their share of validation
    images first."""
    group = (lambda label: label) if not multi_label else _rarest_class(samples)
    rng = random.Random(seed)
    by_class: dict[int, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(group(sample[1]), []).append(sample)
    train, val = [], []
    for label in sorted(by_class):
        items = by_class[label]
        rng.shuffle(items)
        n_val = min(max(round(len(items) * fraction), 1), len(items) - 1)
        val += items[:n_val]
        train += items[n_val:]
    return sorted(train), sorted(val)


def _rarest_class(samples: list[Sample]) -> Callable[[tuple[int, ...]], int]:
    """label tuple -> its class with the fewest images (the lower index on a tie)."""
    counts = Counter(i for _, label in samples for i in label)
    return lambda label: min(label, key=lambda i: (counts[i], i))


def multi_hot(labels: Sequence[tuple[int, ...]], num_classes: int) -> np.ndarray:
    """(N, num_classes) float32 0/1 targets from tuples of class indices."""
    targets = np.zeros((len(labels), num_classes), np.float32)
    for row, label in enumerate(labels):
        targets[row, list(label)] = 1.0
    return targets


class ImageFolder:
    """(image tensor 3xHxW float32, target) for each sample, decoded with `load_image`: a
    map-style data set, which is all a DataLoader asks for. The target is the class index,
    or with `num_classes` (multi-label samples) a 0/1 float vector of that length."""

    def __init__(
        self,
        samples: list[Sample],
        transform: Callable[[np.ndarray], np.ndarray],
        num_classes: int | None = None,
    ):
        self.samples = samples
        self.transform = transform
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        import torch

        path, label = self.samples[index]
        if self.num_classes is not None:
            label = torch.from_numpy(multi_hot([label], self.num_classes)[0])
        return torch.from_numpy(self.transform(load_image(path))), label
