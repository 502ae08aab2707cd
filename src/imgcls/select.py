"""What to label next: rank unlabelled images by how much a person's label would teach the
model, so that a labelling budget goes where the model is unsure, and not to near-copies.

The default strategy, "uncertainty+diversity", is cluster-margin (after Citovsky et al.,
2021): take the `POOL_FACTOR x budget` images with the smallest margin between the two top
calibrated scores (for a multi-label model: a class score nearest its threshold), group
them into `budget` clusters by k-means over the model's L2-normalised embeddings, and take
the least sure image of each cluster. Near-copies of one confusing photo share a cluster,
so 50 of them take one place, not 50. "uncertainty" is the margin ranking alone;
"diversity" is k-center greedy over every image (Sener and Savarese, 2018: each pick the
image farthest from all picked or labelled); "random" a seeded draw, the control.
benchmarks/active.py measured all four (docs/loop.md): k-center greedy picks outliers and
did worse than random, which is why the default clusters instead.

`imgcls select` writes the choice as a label file with an empty `label` column: fill it
in (or label on the server's page) and `imgcls train` takes it.
"""

from __future__ import annotations

import csv
import itertools
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.data.images import list_images
from imgcls.data.label_files import is_label_file, read_unlabelled
from imgcls.data.prefetch import Prefetcher
from imgcls.errors import DataError
from imgcls.files import atomic_write
from imgcls.inference.classifier import ImageClassifier
from imgcls.trust.calibration import sigmoid, softmax
from imgcls.validation import check_scalar

__all__ = [
    "DEFAULT_STRATEGY",
    "POOL_FACTOR",
    "STRATEGIES",
    "Scored",
    "Selection",
    "cluster_margin",
    "k_center_greedy",
    "rank",
    "score_images",
    "select_images",
    "uncertainty",
    "write_queue",
]

STRATEGIES = ("uncertainty+diversity", "uncertainty", "diversity", "random")
DEFAULT_STRATEGY = "uncertainty+diversity"  # the one that beat random: docs/loop.md
# The least sure POOL_FACTOR x budget images are clustered (benchmarks/active.py compared
# 2, 4 and 8: docs/loop.md).
POOL_FACTOR = 4
QUEUE_COLUMNS = ("path", "label", "guess", "score", "margin", "reason")


@dataclass
class Scored:
    """The calibrated scores and embeddings of the images that decoded."""

    paths: list[str]
    probabilities: np.ndarray  # (N, C)
    features: np.ndarray  # (N, D) float32, the pooled penultimate features
    unknown: np.ndarray  # (N,) bool, the model's own "unknown" rule
    labels: Sequence[str]  # the model's class names
    thresholds: np.ndarray | None  # a multi-label model's per-class thresholds
    failures: list[Exception]


@dataclass(frozen=True)
class Selection:
    """The chosen images, best first, with what the model said of each."""

    paths: list[str]
    guesses: list[str]
    scores: list[float]  # top-1 calibrated score
    margins: list[float]  # the uncertainty the ranking read (smaller: less sure)
    reasons: list[str]
    considered: int  # images that decoded
    failures: list[Exception]


def uncertainty(probabilities: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
    """Each image's margin, smaller when the model is less sure: top-1 minus top-2 score;
    for a multi-label model the distance of the class score nearest its threshold."""
    if thresholds is not None:
        return np.abs(probabilities - thresholds).min(axis=1)
    if probabilities.shape[1] < 2:
        return np.ones(len(probabilities))
    top2 = np.partition(probabilities, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def k_center_greedy(
    features: np.ndarray, budget: int, labelled: np.ndarray | None = None, first: int = 0
) -> list[int]:
    """`budget` row indices of `features`, each the row farthest (Euclidean, on
    L2-normalised rows) from every row picked so far and every `labelled` row. With no
    labelled rows the first pick is `first`."""
    points = _normalised(features)
    budget = min(budget, len(points))
    if budget == 0:
        return []
    nearest = np.full(len(points), np.inf)
    if labelled is not None and len(labelled):
        for chunk in np.array_split(_normalised(labelled), max(1, len(labelled) // 1024)):
            nearest = np.minimum(nearest, _squared_distances(points, chunk).min(axis=1))
        picks = []
    else:
        picks = [first]
        nearest = _squared_distances(points, points[first : first + 1])[:, 0]
    while len(picks) < budget:
        pick = int(np.argmax(nearest))
        picks.append(pick)
        nearest = np.minimum(nearest, _squared_distances(points, points[pick : pick + 1])[:, 0])
    return picks


def rank(
    probabilities: np.ndarray,
    features: np.ndarray,
    budget: int,
    strategy: str = DEFAULT_STRATEGY,
    thresholds: np.ndarray | None = None,
    labelled_features: np.ndarray | None = None,
    seed: int = 0,
) -> list[int]:
    """The indices of the `budget` images `strategy` picks, in the order picked."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    check_scalar(budget, "budget", int, min_val=1)
    count = len(probabilities)
    margins = uncertainty(probabilities, thresholds)
    by_margin = np.argsort(margins, kind="stable")
    if strategy == "random":
        return np.random.default_rng(seed).permutation(count)[:budget].tolist()
    if strategy == "uncertainty":
        return by_margin[:budget].tolist()
    if strategy == "diversity":
        return k_center_greedy(features, budget, labelled_features, first=int(by_margin[0]))
    pool = by_margin[: min(count, POOL_FACTOR * budget)]
    if len(pool) <= budget:
        return pool.tolist()
    return pool[cluster_margin(features[pool], margins[pool], budget, seed)].tolist()


def cluster_margin(
    features: np.ndarray, margins: np.ndarray, budget: int, seed: int = 0
) -> list[int]:
    """The least sure row of each of `budget` k-means clusters of `features`, least sure
    first. With fewer distinct rows than clusters, the least sure of the rest fill up."""
    # deferred: the inference-only install has no scikit-learn
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():  # said when copies leave clusters empty: handled below
        warnings.simplefilter("ignore", ConvergenceWarning)
        clusters = KMeans(budget, n_init=3, random_state=seed).fit_predict(_normalised(features))
    members = (np.flatnonzero(clusters == c) for c in range(budget))
    picks = {int(m[np.argmin(margins[m])]) for m in members if len(m)}
    rest = (i for i in np.argsort(margins, kind="stable").tolist() if i not in picks)
    picks |= set(itertools.islice(rest, budget - len(picks)))
    return sorted(picks, key=lambda i: margins[i])


def score_images(classifier: ImageClassifier, paths: Sequence[str | os.PathLike]) -> Scored:
    """Calibrated probabilities and embeddings of each image, from one forward pass."""

    def run(batch: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        logits, features = classifier.runtime.logits_and_features(batch)
        if classifier.multi_label:
            probabilities = sigmoid(logits)
        else:
            probabilities = softmax(logits / classifier.temperature)
        return list(zip(probabilities, features, strict=True))

    prefetcher = Prefetcher(
        classifier.prepare, classifier.preprocess.input_size, classifier.batch_size
    )
    kept, rows, failures = [], [], []
    for batch in prefetcher.batches(paths):
        for path, outcome in batch.apply(run):
            if isinstance(outcome, Exception):
                failures.append(outcome)
            else:
                kept.append(path)
                rows.append(outcome)
    if not rows:
        raise DataError(f"none of the {len(failures)} images decoded; nothing to rank")
    probabilities = np.stack([p for p, _ in rows])
    features = np.stack([f for _, f in rows]).astype(np.float32)
    unknown = classifier.unknown(
        probabilities, _rejection_scores(classifier, probabilities, features)
    )
    return Scored(
        kept,
        probabilities,
        features,
        unknown,
        classifier.labels.names,
        classifier.thresholds,
        failures,
    )


def select_images(
    source: str | os.PathLike,
    model: str,
    budget: int,
    strategy: str = DEFAULT_STRATEGY,
    batch_size: int = 8,
    seed: int = 0,
    on_total: Callable[[int], None] | None = None,
) -> Selection:
    """The `budget` images of `source` (a folder, searched recursively, or a label file's
    rows with an empty label) that `strategy` would have labelled first."""
    check_scalar(budget, "budget", int, min_val=1)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    paths = _source_paths(Path(source))
    if on_total is not None:
        on_total(len(paths))
    classifier = ImageClassifier(model, batch_size=batch_size)
    scored = score_images(classifier, paths)
    picks = rank(
        scored.probabilities, scored.features, budget, strategy, scored.thresholds, seed=seed
    )
    margins = uncertainty(scored.probabilities, scored.thresholds)
    top = np.argsort(-scored.probabilities, axis=1)[:, :2]
    names = scored.labels
    reasons = []
    for i in picks:
        if scored.unknown[i]:
            reasons.append("unknown")
        elif strategy == "random":
            reasons.append("random")
        elif strategy == "diversity":
            reasons.append("unlike the others")
        elif strategy == "uncertainty":
            reasons.append(f"uncertain ({_between(names, top[i])})")
        else:
            reasons.append(f"uncertain ({_between(names, top[i])}), unlike the others")
    return Selection(
        paths=[scored.paths[i] for i in picks],
        guesses=[names[top[i, 0]] for i in picks],
        scores=[float(scored.probabilities[i, top[i, 0]]) for i in picks],
        margins=[float(margins[i]) for i in picks],
        reasons=reasons,
        considered=len(scored.paths),
        failures=scored.failures,
    )


def write_queue(selection: Selection, out: str | os.PathLike) -> Path:
    """The selection as a CSV label file (`label` empty), written atomically. Paths are
    relative to the file's folder when they are under it, else absolute."""
    out = Path(out)
    folder = out.resolve().parent

    def where(path: str) -> str:
        absolute = Path(path).resolve()
        return (
            absolute.relative_to(folder).as_posix()
            if absolute.is_relative_to(folder)
            else str(absolute)
        )

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(QUEUE_COLUMNS)
            for row in zip(
                selection.paths, selection.guesses, selection.scores, selection.margins,
                selection.reasons, strict=True,
            ):  # fmt: skip
                path, guess, score, margin, reason = row
                writer.writerow([where(path), "", guess, f"{score:.4f}", f"{margin:.4f}", reason])

    atomic_write(out, write)
    return out


def _source_paths(source: Path) -> list[str]:
    if source.is_dir():
        paths = [str(path) for path in list_images(source)]
        if not paths:
            raise DataError(f"{source}: no image files in this directory")
        return paths
    if is_label_file(source):
        paths = [str(path) for path in read_unlabelled(source)]
        if not paths:
            raise DataError(f"{source}: every row has a label; nothing to select from")
        return paths
    raise DataError(f"{source}: no such directory (nor a .csv / .jsonl label file)")


def _rejection_scores(classifier, probabilities, features):
    rejection = classifier.rejection
    if rejection is None or classifier.multi_label:
        return None
    return rejection.scores(probabilities, features if rejection.needs_features else None)


def _between(names: Sequence[str], top: np.ndarray) -> str:
    return " or ".join(names[i] for i in top) if len(top) > 1 else names[top[0]]


def _normalised(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def _squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    # |a - b|^2 = |a|^2 + |b|^2 - 2ab, and every row has norm 1.
    return np.maximum(2.0 - 2.0 * points @ centres.T, 0.0)
