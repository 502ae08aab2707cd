"""Embeddings: the pooled penultimate features of every image in a folder or label file,
for search, clustering or a model of your own (what `imgcls features` writes)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgcls.data.datasets import scan_dataset
from imgcls.data.images import list_images
from imgcls.data.label_files import is_label_file
from imgcls.errors import DataError
from imgcls.files import atomic_write
from imgcls.inference.classifier import ImageClassifier
from imgcls.models.registry import DEFAULT_MODEL
from imgcls.results import require_pyarrow

__all__ = ["Features", "collect_features", "extract_features"]


@dataclass
class Features:
    """The features of the images under `root` (or listed in a label file) that decoded."""

    root: str  # the folder, the label file, or a URI
    paths: list[str]  # relative to `root` (to a label file's folder), or as given
    # Each image's folder name (its class, in a class-folder data set), or a label file's
    # labels, several joined by the label delimiter.
    labels: list[str]
    vectors: np.ndarray  # (N, D) float32
    failures: list[Exception]  # the files that did not decode; each message names its file
    skipped: list[str] = field(default_factory=list)  # listed files missing (skip_missing)

    def save(self, path: str | os.PathLike) -> Path:
        """An .npz file with `paths`, `labels` and `features`, or a .parquet file with
        columns `path`, `label` and `features`, written atomically; ".npz" is added to a
        name with neither suffix, as numpy does. Returns the path written."""

        path = Path(path)
        if path.suffix.lower() == ".parquet":
            atomic_write(path, self._write_parquet)
            return path
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

    def _write_parquet(self, path: str) -> None:

        pa = require_pyarrow()
        import pyarrow.parquet as pq

        width = self.vectors.shape[1] if len(self.vectors) else 0
        features = pa.FixedSizeListArray.from_arrays(self.vectors.reshape(-1), width)
        columns = {"path": self.paths, "label": self.labels, "features": features}
        pq.write_table(pa.table(columns), path)


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
    label file lists (`label_delim`, `skip_missing`: see `imgcls.data.label_files`), from
    `model` (a name or run directory; `weights` a weights file for it). `on_total` hears
    the number of images once they are listed, `progress` each image done."""

    root = Path(data)
    skipped: list[str] = []
    if is_label_file(root) and not root.is_dir():
        layout = scan_dataset(root, label_delim=label_delim, skip_missing=skip_missing)
        rows = [row for rows in layout.splits.values() for row in rows]
        paths = [path for path, _ in rows]
        # Outcomes name their files as strings.
        given = {str(path): (label_delim or " ").join(names) for path, names in rows}
        relative, label = (lambda path: layout.relative(Path(path))), given.__getitem__
        skipped = [layout.relative(path) for path, _ in layout.skipped]
    elif root.is_dir():
        paths = list_images(root)
        if not paths:
            raise DataError(f"{root}: no image files in this directory")
        relative, label = None, None  # a folder's: see collect_features
    else:
        raise DataError(f"{root}: no such directory (nor a .csv / .jsonl label file)")
    if on_total is not None:
        on_total(len(paths))
    classifier = ImageClassifier(model, weights=weights, batch_size=batch_size)
    outcomes = classifier.features_paths(paths)
    return collect_features(root, outcomes, progress, relative, label, skipped)


def collect_features(
    root: str | os.PathLike,
    outcomes: Iterable[tuple[str, np.ndarray | Exception]],
    progress: Callable[[int], None] | None = None,
    relative: Callable[[str], str] | None = None,
    label: Callable[[str], str] | None = None,
    skipped: list[str] | None = None,
) -> Features:
    """`Features` from (path, features or failure) pairs, as `features_paths` of an
    `ImageClassifier` (or of `imgcls.ray.RayClassifier`) gives them for files under
    `root`, a folder or a URI. `relative` and `label` name each kept path and give its
    label (default: relative to `root`, and its class folder's name; "" for a file
    directly in `root`, which is in no class folder)."""
    relative = relative or (lambda path: _relative(str(path), str(root)))
    label = label or (lambda path: Path(relative(path)).parent.name)
    kept, vectors, failures = [], [], []
    for path, outcome in outcomes:
        if progress is not None:
            progress(1)
        if isinstance(outcome, Exception):
            failures.append(outcome)
        else:
            kept.append(path)
            vectors.append(outcome)
    return Features(
        root=str(root),
        paths=[relative(p) for p in kept],
        labels=[label(p) for p in kept],
        vectors=np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, 0), np.float32),
        failures=failures,
        skipped=list(skipped or []),
    )


def _relative(path: str, root: str) -> str:
    """`path` relative to `root` when it is under it (a folder or URI), else as it is."""
    if "://" not in root:
        return str(Path(path).relative_to(root)) if Path(path).is_relative_to(root) else path
    prefix = root.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else path
