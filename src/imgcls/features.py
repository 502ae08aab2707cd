"""Embeddings: the pooled penultimate features of every image in a folder or label file,
for search, clustering or a model of your own (what `imgcls features` writes)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgcls.data import scan_dataset
from imgcls.errors import DataError
from imgcls.images import list_images
from imgcls.label_files import is_label_file
from imgcls.models import DEFAULT_MODEL

__all__ = ["Features", "extract_features"]


@dataclass
class Features:
    """The features of the images under `root` (or listed in a label file) that decoded."""

    root: str  # the folder, or the label file
    paths: list[str]  # relative to `root` (to a label file's folder), or absolute
    # Each image's folder name (its class, in a class-folder data set), or a label file's
    # labels, several joined by the label delimiter.
    labels: list[str]
    vectors: np.ndarray  # (N, D) float32
    failures: list[Exception]  # the files that did not decode; each message names its file
    skipped: list[str] = field(default_factory=list)  # listed files missing (skip_missing)

    def save(self, path: str | os.PathLike) -> Path:
        """An .npz file with `paths`, `labels` and `features`, written atomically; ".npz" is
        added to a name without it, as numpy does. Returns the path written."""
        from imgcls.checkpoint import atomic_write

        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: numpy would add ".npz" to a name
                np.savez_compressed(
                    f,
                    paths=np.asarray(self.paths),
                    labels=np.asarray(self.labels),
                    features=self.vectors,
                )

        atomic_write(path, write)
        return path


def extract_features(
    data: str | os.PathLike,
    model: str = DEFAULT_MODEL,
    weights: str | os.PathLike | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    label_delim: str | None = None,
    skip_missing: bool = False,
) -> Features:
    """Features of every image under `data` (searched recursively), or of every image a
    label file lists (`label_delim`, `skip_missing`: see `imgcls.label_files`), from
    `model` (a name or run directory; `weights` a weights file for it). `on_total` hears
    the number of images once they are listed, `progress` each image done."""
    from imgcls.classifier import ImageClassifier

    root = Path(data)
    skipped: list[str] = []
    if is_label_file(root) and not root.is_dir():
        layout = scan_dataset(root, label_delim=label_delim, skip_missing=skip_missing)
        rows = [row for rows in layout.splits.values() for row in rows]
        paths = [path for path, _ in rows]
        given = {path: (label_delim or " ").join(names) for path, names in rows}
        relative, label = layout.relative, given.__getitem__
        skipped = [layout.relative(path) for path, _ in layout.skipped]
    elif root.is_dir():
        paths = list_images(root)
        if not paths:
            raise DataError(f"{root}: no image files in this directory")

        def relative(path: Path) -> str:
            return str(path.relative_to(root))

        def label(path: Path) -> str:
            return path.parent.name

    else:
        raise DataError(f"{root}: no such directory (nor a .csv / .jsonl label file)")
    if on_total is not None:
        on_total(len(paths))
    classifier = ImageClassifier(model, weights=weights, batch_size=batch_size)
    kept, vectors, failures = [], [], []
    for path, outcome in classifier.features_paths(paths):
        if progress is not None:
            progress(1)
        if isinstance(outcome, Exception):
            failures.append(outcome)
        else:
            kept.append(Path(path))
            vectors.append(outcome)
    return Features(
        root=str(root),
        paths=[relative(p) for p in kept],
        labels=[label(p) for p in kept],
        vectors=np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, 0), np.float32),
        failures=failures,
        skipped=skipped,
    )
