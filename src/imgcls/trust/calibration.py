"""Trustworthy scores: temperature scaling, calibration error, the "unknown" rule and the
coverage / accuracy trade-off.

A run fits these on its validation split after training (see `train.py`) and stores them
in its config.json; `ImageClassifier` applies them to every prediction:

    probabilities = softmax(logits / temperature)          (Guo et al., 2017)
    unknown       = score < threshold

where `score` is the top-1 calibrated probability ("max_prob") or the mean cosine
similarity of the image's features to its k nearest training images ("knn").
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.errors import WeightsError
from imgcls.files import atomic_write

__all__ = [
    "DEFAULT_TARGET_COVERAGE",
    "ECE_BINS",
    "KNN_NEIGHBOURS",
    "MIN_SCORE_GRID",
    "REJECT_SCORES",
    "KnnScorer",
    "Rejection",
    "choose_threshold",
    "expected_calibration_error",
    "fit_temperature",
    "fit_trust",
    "log_softmax",
    "operating_points",
    "sigmoid",
    "softmax",
    "uncalibrated",
]

REJECT_SCORES = ("max_prob", "knn")
# Answer 95% of in-distribution validation images: the usual operating point of
# out-of-distribution detection (the "TPR 95%" of the OOD literature).
DEFAULT_TARGET_COVERAGE = 0.95
ECE_BINS = 15
KNN_NEIGHBOURS = 5
KNN_REFERENCE = "knn_reference.safetensors"  # the training features, in the run directory
KNN_MAX_REFERENCE = 20_000  # training images kept as k-NN reference (a seeded sample above)
# Thresholds on the top-1 probability that `imgcls evaluate` reports: the values a user
# would pass to --min-score.
MIN_SCORE_GRID = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


# Written here, not scipy.special's: numpy only, the serving install has no scipy (this
# module is on the inference path: ImageClassifier applies the temperature).
def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed in float64 so tiny probabilities do not round to zero."""
    return np.exp(log_softmax(logits))


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function in float64: a multi-label model's independent
    per-class probabilities (numpy only, as `softmax`)."""
    x = np.asarray(logits, np.float64)
    # exp of a negative number only: no overflow warning for large |x|
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (numpy only, as `softmax`)."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of
    softmax(logits / T) on held-out (logits, labels): one scalar, so a bounded 1-D search
    (scipy) in log T is all it takes. Heads pass log-probabilities as logits."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, int)
    if len(labels) == 0 or (logits.argmax(axis=1) == labels).all():
        # Without a single error the NLL keeps falling as T -> 0: no evidence to sharpen
        # or soften, so the scores stay as they are.
        return 1.0
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / math.exp(log_t))[rows, labels].mean())

    best = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(best.x))


def uncalibrated(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities before temperature scaling: softmax(T * log p) undoes
    softmax(z / T), since log p = z / T + a constant per row."""
    if temperature == 1.0:
        return probabilities
    return softmax(temperature * np.log(np.maximum(probabilities, 1e-300)))


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE over equal-width confidence bins: sum of |accuracy - confidence| by bin weight."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    if len(confidence) == 0:
        return 0.0
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def choose_threshold(
    scores: np.ndarray,
    correct: np.ndarray,
    target_precision: float | None = None,
    target_coverage: float | None = None,
) -> float:
    """The threshold on `scores` (answer when score >= threshold) that meets the target on
    held-out data: the lowest one whose answered images reach `target_precision` accuracy,
    or the highest one that still answers `target_coverage` of the images (the default
    target when neither is given)."""
    scores, correct = np.asarray(scores, float), np.asarray(correct, bool)
    if len(scores) == 0:
        raise ValueError("choosing a threshold needs at least one validation image")
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], correct[order]
    if target_precision is not None:
        accuracy = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        # Answering the top k: the largest k whose accuracy still meets the target, cut at
        # a score boundary so that ties are answered or refused together.
        reached = np.flatnonzero(accuracy >= target_precision)
        keep = int(reached[-1]) + 1 if len(reached) else 1
    else:
        coverage = DEFAULT_TARGET_COVERAGE if target_coverage is None else target_coverage
        keep = max(1, math.ceil(coverage * len(ranked) - 1e-9))
    return float(ranked[keep - 1])


def operating_points(
    scores: np.ndarray, correct: np.ndarray, thresholds: tuple[float, ...] = MIN_SCORE_GRID
) -> list[dict[str, float | int | None]]:
    """For each threshold: the share of images answered (score >= threshold) and the
    accuracy on those; accuracy is None when nothing is answered."""
    scores, correct = np.asarray(scores, float), np.asarray(correct, bool)
    points = []
    for threshold in thresholds:
        answered = scores >= threshold
        count = int(answered.sum())
        points.append(
            {
                "threshold": float(threshold),
                "coverage": count / len(scores) if len(scores) else 0.0,
                "accuracy": float(correct[answered].mean()) if count else None,
                "answered": count,
            }
        )
    return points


class KnnScorer:
    """Out-of-distribution score: mean cosine similarity of an image's features to its k
    nearest training images. Far from everything seen in training → low score.

    scikit-learn's `NearestNeighbors` does the search (brute force on L2-normalised
    vectors, where Euclidean order is cosine order)."""

    def __init__(self, reference: np.ndarray, k: int = KNN_NEIGHBOURS) -> None:
        from sklearn.neighbors import NearestNeighbors

        self.reference = _normalise(np.asarray(reference, np.float32))
        self.k = min(k, len(self.reference))
        self.index = NearestNeighbors(n_neighbors=self.k, algorithm="brute")
        self.index.fit(self.reference)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        distances, _ = self.index.kneighbors(_normalise(np.asarray(features, np.float32)))
        # |a - b|² = 2 - 2 cos(a, b) for unit vectors
        return (1.0 - distances.astype(np.float64) ** 2 / 2).mean(axis=1)

    @staticmethod
    def sample(features: np.ndarray, seed: int = 0) -> np.ndarray:
        """At most KNN_MAX_REFERENCE rows of `features` (seeded), to keep runs small."""
        if len(features) <= KNN_MAX_REFERENCE:
            return features
        rng = np.random.default_rng(seed)
        return features[np.sort(rng.choice(len(features), KNN_MAX_REFERENCE, replace=False))]

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.numpy import save_file

        reference = np.ascontiguousarray(self.reference)
        atomic_write(path, lambda tmp: save_file({"features": reference}, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike, k: int = KNN_NEIGHBOURS) -> KnnScorer:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            reference = load_file(str(path))["features"]
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            raise WeightsError(f"{path}: not a k-NN reference file ({exc})") from None
        return cls(reference, k)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class Rejection:
    """A run's "unknown" rule: answer only when `score` reaches `threshold`."""

    score: str  # "max_prob" | "knn"
    threshold: float
    knn: KnnScorer | None = None  # the training features, for score == "knn"

    @classmethod
    def from_config(cls, config: dict[str, Any], run_dir: str | os.PathLike) -> Rejection | None:
        """The rule in a run's config.json "reject" entry (None when the run has none)."""
        entry = config.get("reject")
        if not entry:
            return None
        knn = None
        if entry["score"] == "knn":
            knn = KnnScorer.load(Path(run_dir) / entry["reference"], entry.get("k", KNN_NEIGHBOURS))
        return cls(entry["score"], float(entry["threshold"]), knn)

    @property
    def needs_features(self) -> bool:
        return self.score == "knn"

    def scores(self, probabilities: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        """The score the threshold applies to, per image."""
        if self.knn is not None:
            return self.knn(features)
        return probabilities.max(axis=1)


def fit_trust(
    val_logits: np.ndarray,
    val_labels: np.ndarray,
    score: str = "max_prob",
    target_precision: float | None = None,
    target_coverage: float | None = None,
    val_features: np.ndarray | None = None,
    train_features: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, Any], KnnScorer | None]:
    """Fit a run's temperature and its "unknown" rule on validation data.

    Returns the config.json entries "calibration" (temperature, ECE and NLL before and
    after) and "reject" (score, threshold, what it achieved on validation), and the k-NN
    scorer (its reference is saved beside them) when `score` is "knn"."""
    labels = np.asarray(val_labels, int)
    rows = np.arange(len(labels))
    temperature = fit_temperature(val_logits, labels)
    before, after = softmax(val_logits), softmax(val_logits / temperature)
    correct = after.argmax(axis=1) == labels
    calibration = {
        "temperature": temperature,
        "val_images": len(labels),
        "val_ece_before": expected_calibration_error(
            before.max(axis=1), before.argmax(axis=1) == labels
        ),
        "val_ece_after": expected_calibration_error(after.max(axis=1), correct),
        "val_nll_before": float(-np.log(np.maximum(before[rows, labels], 1e-300)).mean()),
        "val_nll_after": float(-np.log(np.maximum(after[rows, labels], 1e-300)).mean()),
    }
    knn = None
    if score == "knn":
        knn = KnnScorer(KnnScorer.sample(np.asarray(train_features), seed))
        scores = knn(np.asarray(val_features))
    else:
        scores = after.max(axis=1)
    threshold = choose_threshold(scores, correct, target_precision, target_coverage)
    answered = scores >= threshold
    reject: dict[str, Any] = {
        "score": score,
        "threshold": threshold,
        "target_precision": target_precision,
        "target_coverage": (
            None
            if target_precision is not None
            else (DEFAULT_TARGET_COVERAGE if target_coverage is None else target_coverage)
        ),
        "val_coverage": float(answered.mean()),
        "val_accuracy_answered": float(correct[answered].mean()) if answered.any() else None,
    }
    if knn is not None:
        reject.update(k=knn.k, reference=KNN_REFERENCE)
    return calibration, reject, knn
