"""Conformal prediction sets: the labels that contain the true one at a chosen coverage.

Split conformal prediction (Vovk et al., 2005; Angelopoulos & Bates, 2021): score how
badly the model fits the true label on n held-out calibration images; the threshold for
coverage level L is the ceil((n + 1) L)-th smallest of those scores, and an image's
prediction set holds every label whose score is at most the threshold. When calibration
and test images are exchangeable, P(true label in the set) >= L (docs/trust.md).

Scores (`CONFORMAL_SCORES`), of calibrated probabilities p:
  lac   1 - p[y]: "least ambiguous set-valued classifier", THR (Sadinle et al., 2019)
  aps   the probability mass of the labels ranked at or above y (Romano et al., 2020)
  raps  aps + lambda * max(0, rank(y) - k_reg) (Angelopoulos et al., 2021)
A multi-label model gets one LAC threshold per class, fitted on the calibration images
where that class is present: each present class is in the set with probability >= L.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CONFORMAL_SCORES",
    "DEFAULT_CONFORMAL_SCORE",
    "STANDARD_LEVELS",
    "Conformal",
    "conformal_quantile",
    "fit_conformal",
    "level_report",
    "set_metrics",
]

CONFORMAL_SCORES = ("lac", "aps", "raps")
# Smallest sets at equal coverage on the measurements in docs/trust.md.
DEFAULT_CONFORMAL_SCORE = "lac"
STANDARD_LEVELS = (0.8, 0.9, 0.95)
RAPS_LAMBDA = 0.01  # the penalty per rank beyond k_reg (Angelopoulos et al.'s default scale)
RAPS_K_REG = 1  # ranks free of penalty
MAX_STORED_SCORES = 10_000  # calibration scores kept in config.json (a seeded sample above)
_DIGITS = 6  # stored scores are rounded to this many decimals


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The split-conformal threshold: the ceil((n + 1) level)-th smallest score, or
    infinity (every label in the set) when n is too small for the level."""
    scores = np.sort(np.asarray(scores, np.float64))
    rank = math.ceil((len(scores) + 1) * level - 1e-9)
    return math.inf if rank > len(scores) else float(scores[rank - 1])


def _ranked_scores(probabilities: np.ndarray, score: str) -> tuple[np.ndarray, np.ndarray]:
    """(order, scores by rank): the labels by descending probability and each rank's APS
    or RAPS score (non-decreasing along the rank)."""
    order = np.argsort(-probabilities, axis=1, kind="stable")
    ranked = np.take_along_axis(probabilities, order, axis=1)
    cumulative = np.cumsum(ranked, axis=1)
    if score == "raps":
        ranks = np.arange(1, probabilities.shape[1] + 1)
        cumulative = cumulative + RAPS_LAMBDA * np.maximum(0, ranks - RAPS_K_REG)
    return order, cumulative


def label_scores(probabilities: np.ndarray, score: str) -> np.ndarray:
    """(N, C) conformity score of every label of every image (low: fits well)."""
    probabilities = np.asarray(probabilities, np.float64)
    if score == "lac":
        return 1.0 - probabilities
    order, by_rank = _ranked_scores(probabilities, score)
    scores = np.empty_like(by_rank)
    np.put_along_axis(scores, order, by_rank, axis=1)
    return scores


@dataclass
class Conformal:
    """A run's fitted split-conformal predictor: the score, the calibration scores (sorted;
    one array per class for a multi-label run) and the thresholds of `STANDARD_LEVELS`."""

    score: str
    calibration_scores: np.ndarray | list[np.ndarray]
    multi_label: bool = False
    thresholds: dict[float, Any] = field(default_factory=dict)

    def threshold(self, level: float) -> float | np.ndarray:
        """The score threshold at coverage `level` in (0, 1] (per class for a multi-label
        run); infinite (every label) where the calibration images are too few for it."""
        if not 0.0 < level <= 1.0:
            raise ValueError(f"coverage must be in (0, 1], got {level!r}")
        if level in self.thresholds:
            return self.thresholds[level]
        if self.multi_label:
            return np.array([conformal_quantile(s, level) for s in self.calibration_scores])
        return conformal_quantile(self.calibration_scores, level)

    def sets(self, probabilities: np.ndarray, level: float) -> np.ndarray:
        """(N, C) bool: the prediction set of each image at coverage `level`."""
        threshold = self.threshold(level)
        score = "lac" if self.multi_label else self.score
        return label_scores(probabilities, score) <= np.asarray(threshold) + 1e-12

    def to_config(self) -> dict[str, Any]:
        """The config.json / ONNX metadata entry "conformal"."""

        def plain(values):
            values = np.asarray(values, np.float64)
            return [None if math.isinf(v) else round(float(v), _DIGITS) for v in values.ravel()]

        entry: dict[str, Any] = {"score": self.score, "multi_label": self.multi_label}
        entry["levels"] = {
            f"{level:g}": (plain(t) if self.multi_label else plain([t])[0])
            for level, t in self.thresholds.items()
        }
        if self.multi_label:
            entry["calibration_scores"] = [plain(s) for s in self.calibration_scores]
        else:
            entry["calibration_scores"] = plain(self.calibration_scores)
        return entry

    @classmethod
    def from_config(cls, entry: dict[str, Any]) -> Conformal:
        def array(values):
            return np.array([math.inf if v is None else v for v in values], np.float64)

        multi_label = bool(entry.get("multi_label", False))
        stored = entry["calibration_scores"]
        scores = [array(s) for s in stored] if multi_label else array(stored)
        thresholds = {
            float(level): (array(t) if multi_label else (math.inf if t is None else float(t)))
            for level, t in entry.get("levels", {}).items()
        }
        return cls(entry["score"], scores, multi_label, thresholds)


def fit_conformal(
    probabilities: np.ndarray,
    labels: np.ndarray,
    score: str = DEFAULT_CONFORMAL_SCORE,
    levels: tuple[float, ...] = STANDARD_LEVELS,
    seed: int = 0,
) -> Conformal:
    """Fit split conformal on calibration (probabilities, labels): labels (N,) class
    indices, or (N, C) 0/1 for a multi-label run (then per-class LAC, whatever `score`)."""
    if score not in CONFORMAL_SCORES:
        raise ValueError(f"score must be one of {', '.join(CONFORMAL_SCORES)}, got {score!r}")
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    if labels.ndim == 2:
        per_class = [
            np.sort(_sample(1.0 - probabilities[labels[:, k] > 0, k], rng))
            for k in range(probabilities.shape[1])
        ]
        conformal = Conformal("lac", per_class, multi_label=True)
    else:
        true = label_scores(probabilities, score)[np.arange(len(labels)), labels.astype(int)]
        conformal = Conformal(score, np.sort(_sample(true, rng)))
    conformal.thresholds = {level: conformal.threshold(level) for level in levels}
    return conformal


def _sample(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """At most MAX_STORED_SCORES of `scores` (a random subset is still exchangeable with
    the test images, so the guarantee holds, with that smaller n), rounded as they are
    stored so that a loaded run draws the same sets."""
    if len(scores) > MAX_STORED_SCORES:
        scores = rng.choice(scores, MAX_STORED_SCORES, replace=False)
    return np.round(scores, _DIGITS)


def set_metrics(
    sets: np.ndarray, labels: np.ndarray, class_names: list[str] | tuple[str, ...]
) -> dict[str, Any]:
    """How prediction sets (N, C) bool did against the true labels: (N,) class indices, or
    (N, C) 0/1 for multi-label images (then coverage counts each present class). Empirical
    coverage, mean and largest set size, the shares of singleton and empty sets, coverage
    per class and the class covered least."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = np.eye(sets.shape[1], dtype=bool)[labels.astype(int)]
    labels = labels.astype(bool)
    covered = sets & labels
    sizes = sets.sum(axis=1)
    per_class = {
        name: float(covered[:, k].sum() / labels[:, k].sum())
        for k, name in enumerate(class_names)
        if labels[:, k].any()
    }
    weakest = min(per_class, key=per_class.get) if per_class else None
    some = len(sets) > 0
    return {
        "coverage": float(covered.sum() / labels.sum()) if labels.any() else None,
        "mean_set_size": float(sizes.mean()) if some else None,
        "max_set_size": int(sizes.max()) if some else None,
        "singleton_share": float((sizes == 1).mean()) if some else None,
        "empty_share": float((sizes == 0).mean()) if some else None,
        "per_class_coverage": per_class,
        "weakest_class": weakest,
        "weakest_class_coverage": per_class[weakest] if weakest else None,
    }


def level_report(
    conformal: Conformal,
    probabilities: np.ndarray,
    labels: np.ndarray,
    class_names: list[str] | tuple[str, ...],
    levels: tuple[float, ...] = STANDARD_LEVELS,
) -> dict[str, Any]:
    """What `imgcls evaluate` reports of a model's prediction sets: `set_metrics` at each
    coverage level, under its score."""
    return {
        "score": conformal.score,
        "levels": {
            f"{level:g}": set_metrics(conformal.sets(probabilities, level), labels, class_names)
            for level in levels
        },
    }
