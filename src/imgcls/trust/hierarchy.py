"""Hierarchical answers: the deepest node of a class taxonomy that the model is sure of.

A taxonomy is a tree over a model's classes (its leaves): nested class folders
(`DATA/train/red/hearts/`), a child,parent file, or for ImageNet models WordNet's hypernym
tree of the 1,000 classes (`wordnet_imagenet.tsv`, derived by `tools/wordnet_imagenet.py`).
A node's probability is the sum of its classes' calibrated probabilities; the answer is the
deepest node whose probability reaches the target (`answer_confidence`). A photo the model
cannot tell between tabby, tiger cat and Egyptian cat is a "domestic cat"; a card it cannot
tell between hearts and diamonds is "red". None when no node reaches the target (a
taxonomy with several roots, an image spread across them).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.errors import DataError
from imgcls.models.labels import Labels

__all__ = [
    "DEFAULT_ANSWER_CONFIDENCE",
    "Answer",
    "Taxonomy",
    "read_taxonomy_file",
    "wordnet_parents",
    "wordnet_taxonomy",
]

DEFAULT_ANSWER_CONFIDENCE = 0.9  # docs/trust.md has the measurement
WORDNET_FILE = "wordnet_imagenet.tsv"


@dataclass(frozen=True)
class Answer:
    """The node a result answers with: its name, summed probability and the names from
    the root down to it."""

    label: str
    probability: float
    path: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "probability": self.probability, "path": list(self.path)}


class Taxonomy:
    """A tree over a model's classes. `parents` maps a node id to its parent's (a class
    id, or an inner node's); a node without a parent is a root. `names` gives inner nodes
    a display name (default: the id); classes keep the model's label names."""

    def __init__(
        self,
        parents: Mapping[str, str],
        class_ids: Sequence[str],
        class_names: Sequence[str] | None = None,
        names: Mapping[str, str] | None = None,
    ) -> None:
        self.parents = dict(parents)
        self.class_ids = tuple(class_ids)
        display = dict(names or {})
        display.update(zip(self.class_ids, class_names or self.class_ids, strict=True))
        chains = [self._chain(c) for c in self.class_ids]  # class ... root
        self.nodes = tuple(dict.fromkeys(node for chain in chains for node in chain))
        index = {node: i for i, node in enumerate(self.nodes)}
        # membership[n, c]: class c is node n or under it
        self.membership = np.zeros((len(self.nodes), len(self.class_ids)), np.float64)
        for c, chain in enumerate(chains):
            self.membership[[index[node] for node in chain], c] = 1.0
        self.depth = np.array([len(self._chain(n)) for n in self.nodes])
        self.paths = tuple(
            tuple(display.get(n, n) for n in reversed(self._chain(node))) for node in self.nodes
        )

    def _chain(self, node: str) -> list[str]:
        """`node` and its ancestors up to the root (DataError on a cycle)."""
        chain = [node]
        while chain[-1] in self.parents:
            parent = self.parents[chain[-1]]
            if parent in chain:
                raise DataError(f"taxonomy: {parent!r} is its own ancestor (a cycle)")
            chain.append(parent)
        return chain

    @property
    def inner_nodes(self) -> int:
        return len(self.nodes) - len(self.class_ids)

    def answers(self, probabilities: np.ndarray, target: float) -> list[Answer | None]:
        """Each row's answer: the deepest node whose summed probability reaches `target`,
        the most probable among equally deep ones."""
        mass = np.asarray(probabilities, np.float64) @ self.membership.T  # (N, nodes)
        # Depth first, probability second: one key, since probabilities are at most 1.
        key = np.where(mass >= target - 1e-12, self.depth + mass, -1.0)
        best = key.argmax(axis=1)
        return [
            Answer(self.paths[b][-1], float(row[b]), self.paths[b]) if k[b] >= 0 else None
            for row, k, b in zip(mass, key, best, strict=True)
        ]

    def to_config(self) -> dict[str, str]:
        """The parents entry of a run's config.json and ONNX metadata."""
        return self.parents


def read_taxonomy_file(path: str | os.PathLike, class_names: Sequence[str]) -> dict[str, str]:
    """The child -> parent rows of a CSV taxonomy file (a `child,parent` header is
    optional), checked against the run's classes: DataError naming the file and the
    problem (a class missing, a child given two parents)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as stream:
            rows = [row for row in csv.reader(stream) if row and any(cell.strip() for cell in row)]
    except OSError as exc:
        raise DataError(f"{path}: cannot read the taxonomy file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file of child,parent rows") from None
    if rows and [cell.strip().lower() for cell in rows[0]] == ["child", "parent"]:
        rows = rows[1:]
    parents: dict[str, str] = {}
    for number, row in enumerate(rows, start=1):
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"{path} row {number}: expected child,parent, got {row}")
        child, parent = row[0].strip(), row[1].strip()
        if parents.setdefault(child, parent) != parent:
            raise DataError(f"{path} row {number}: {child!r} already has parent {parents[child]!r}")
    missing = [name for name in class_names if name not in parents]
    if missing:
        raise DataError(f"{path}: no parent for class(es) {missing}")
    try:
        Taxonomy(parents, class_names)  # a cycle fails here, naming its node
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    return parents


@lru_cache(maxsize=1)
def _wordnet() -> tuple[dict[str, str], dict[str, str]]:
    text = files("imgcls.trust").joinpath(WORDNET_FILE).read_text(encoding="utf-8")
    parents, names = {}, {}
    for line in text.splitlines():
        wnid, parent, name = line.split("\t")
        names[wnid] = name
        if parent:
            parents[wnid] = parent
    return parents, names


def wordnet_parents() -> tuple[dict[str, str], dict[str, str]]:
    """WordNet 3.0's first-hypernym tree of the ImageNet-1k classes, up to `entity`:
    (wnid -> parent wnid, wnid -> name), from the file shipped in this package."""
    return _wordnet()


def wordnet_taxonomy(labels: Labels) -> Taxonomy | None:
    """WordNet's taxonomy of `labels` when every class id is a WordNet id of the ImageNet
    tree (ImageNet models, and runs trained on folders named by those ids); else None."""
    return _wordnet_taxonomy(labels.class_ids, labels.names)


@lru_cache(maxsize=4)
def _wordnet_taxonomy(class_ids: tuple[str, ...], names: tuple[str, ...]) -> Taxonomy | None:
    parents, inner = wordnet_parents()
    if not all(c in inner for c in class_ids):
        return None
    return Taxonomy(parents, class_ids, names, inner)
