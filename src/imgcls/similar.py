"""Similar images: an embedding index of a folder or label file, and the nearest images to
a query image (what `imgcls index`, `imgcls search` and the server's `/v1/similar` use).

An index is a folder: `index.faiss`, a faiss HNSW graph over the L2-normalised pooled
features (so inner product is cosine similarity), and `items.json`, the model that made
the features and each image's path and label. faiss was picked over usearch and exact
search by measurement (benchmarks/ann_index.py, docs/loop.md). faiss reads its own binary
format, never a pickle.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.data.images import ImageSource
from imgcls.errors import DataError
from imgcls.features import Features
from imgcls.inference.classifier import ImageClassifier

__all__ = ["EF_SEARCH", "HNSW_M", "EmbeddingIndex", "Neighbour", "build_index"]

INDEX_FILE, ITEMS_FILE = "index.faiss", "items.json"
HNSW_M = 32  # graph degree: recall@10 0.97-1.0 at 10k-100k (docs/loop.md)
EF_CONSTRUCTION = 128  # candidates kept while building
EF_SEARCH = 128  # candidates kept while searching: recall@10 1.00 at 100k, ~8 ms a query


@dataclass(frozen=True)
class Neighbour:
    """One indexed image near the query."""

    path: str
    label: str
    similarity: float  # cosine similarity of the embeddings, 1.0 for the same image

    def to_dict(self) -> dict[str, str | float]:
        return {"path": self.path, "label": self.label, "similarity": round(self.similarity, 6)}


def _faiss():
    try:
        import faiss  # deferred: an optional extra, only index and search need it
    except ModuleNotFoundError:
        raise DataError("similar-image search needs faiss; pip install 'imgcls[index]'") from None
    return faiss


def _normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def build_index(features: Features, model: str, out: str | os.PathLike) -> Path:
    """Write the index of `features` (made by `model`) to the folder `out`, replacing it
    whole or not at all: it is built beside it, then renamed."""
    if not len(features.paths):
        raise DataError(f"{features.root}: no image decoded; nothing to index")
    faiss = _faiss()
    vectors = _normalised(features.vectors)
    index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    index.add(vectors)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        faiss.write_index(index, str(staging / INDEX_FILE))
        root = Path(features.root)
        items = {
            # A run directory by its absolute path: the index is searched from anywhere.
            "model": str(Path(model).resolve()) if Path(model).exists() else model,
            "dimensions": int(vectors.shape[1]),
            "root": str(root.resolve() if "://" not in features.root else features.root),
            "paths": features.paths,
            "labels": features.labels,
        }
        (staging / ITEMS_FILE).write_text(json.dumps(items), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


class EmbeddingIndex:
    """A loaded index and the model whose features it holds (loaded on first query)."""

    def __init__(self, path: str | os.PathLike, classifier: ImageClassifier | None = None):
        self.path = Path(path)
        items_file, index_file = self.path / ITEMS_FILE, self.path / INDEX_FILE
        if not items_file.is_file() or not index_file.is_file():
            raise DataError(
                f"{self.path}: not an index (expected {ITEMS_FILE} and {INDEX_FILE}; "
                "make one with `imgcls index`)"
            )
        try:
            items = json.loads(items_file.read_text(encoding="utf-8"))
            self.model, self.dimensions = str(items["model"]), int(items["dimensions"])
            self.root = str(items["root"])
            self.paths, self.labels = list(items["paths"]), list(items["labels"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{items_file}: not an index's item list ({exc})") from None
        self._index = _faiss().read_index(str(index_file))
        if self._index.ntotal != len(self.paths) or self._index.d != self.dimensions:
            raise DataError(f"{self.path}: {INDEX_FILE} and {ITEMS_FILE} do not match")
        self._index.hnsw.efSearch = EF_SEARCH
        self._classifier = classifier

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def classifier(self) -> ImageClassifier:
        """The index's model, loaded on first use unless given."""
        if self._classifier is None:
            self._classifier = ImageClassifier(self.model)
        return self._classifier

    @classifier.setter
    def classifier(self, classifier: ImageClassifier) -> None:
        self._classifier = classifier

    def embed(self, image: ImageSource) -> np.ndarray:
        """The query image's features, (D,), from the index's model."""
        batch = self.classifier.prepare(image)[None]
        return self.classifier.runtime.features(batch)[0]

    def search_vector(self, vector: np.ndarray, k: int = 10) -> list[Neighbour]:
        """The `k` indexed images nearest `vector`, nearest first."""
        vector = np.asarray(vector, np.float32).reshape(1, -1)
        if vector.shape[1] != self.dimensions:
            raise DataError(
                f"{self.path}: holds {self.dimensions}-feature embeddings, got {vector.shape[1]}"
            )
        similarities, rows = self._index.search(_normalised(vector), min(k, len(self)))
        return [
            Neighbour(self.paths[row], self.labels[row], float(similarity))
            for similarity, row in zip(similarities[0], rows[0], strict=True)
            if row >= 0
        ]

    def search(self, image: ImageSource, k: int = 10) -> list[Neighbour]:
        """The `k` indexed images most like `image` (a path, bytes, array or PIL image)."""
        return self.search_vector(self.embed(image), k)
