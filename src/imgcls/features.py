"""Embeddings: the pooled penultimate features of every image in a folder, for search,
clustering or a model of your own (what `imgcls features` writes)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.errors import DataError
from imgcls.images import list_images
from imgcls.models import DEFAULT_MODEL

__all__ = ["Features", "collect_features", "extract_features"]


@dataclass
class Features:
    """The features of the images under `root` that decoded."""

    root: str
    paths: list[str]  # relative to `root` (as given, for a file elsewhere)
    labels: list[str]  # each image's folder name (its class, in a class-folder data set)
    vectors: np.ndarray  # (N, D) float32
    failures: list[Exception]  # the files that did not decode; each message names its file

    def save(self, path: str | os.PathLike) -> Path:
        """An .npz file with `paths`, `labels` and `features`, or a .parquet file with
        columns `path`, `label` and `features`, written atomically; ".npz" is added to a
        name with neither suffix, as numpy does. Returns the path written."""
        from imgcls.checkpoint import atomic_write

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
        from imgcls.results import require_pyarrow

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
) -> Features:
    """Features of every image under `data` (searched recursively) from `model` (a name or
    run directory; `weights` a weights file for it). `on_total` hears the number of
    images once they are listed, `progress` each image done."""
    from imgcls.classifier import ImageClassifier

    root = Path(data)
    if not root.is_dir():
        raise DataError(f"{root}: no such directory")
    paths = list_images(root)
    if not paths:
        raise DataError(f"{root}: no image files in this directory")
    if on_total is not None:
        on_total(len(paths))
    classifier = ImageClassifier(model, weights=weights, batch_size=batch_size)
    return collect_features(root, classifier.features_paths(paths), progress)


def collect_features(
    root: str | os.PathLike,
    outcomes: Iterable[tuple[str, np.ndarray | Exception]],
    progress: Callable[[int], None] | None = None,
) -> Features:
    """`Features` from (path, features or failure) pairs, as `features_paths` of an
    `ImageClassifier` (or of `imgcls.ray.RayClassifier`) gives them for files under
    `root`, a folder or a URI."""
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
        paths=[_relative(path, str(root)) for path in kept],
        labels=[Path(path).parent.name for path in kept],
        vectors=np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, 0), np.float32),
        failures=failures,
    )


def _relative(path: str, root: str) -> str:
    """`path` relative to `root` when it is under it (a folder or URI), else as it is."""
    if "://" not in root:
        return str(Path(path).relative_to(root)) if Path(path).is_relative_to(root) else path
    prefix = root.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else path
