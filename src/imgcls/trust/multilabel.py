"""Multi-label classification: per-class decision thresholds chosen on the validation
split, and the metrics that judge several labels per image (scikit-learn's).

A multi-label model gives every class an independent probability (a sigmoid of its
logit); a class is present when its probability reaches that class's threshold. Each
threshold is chosen on the validation images where its class's F1 is highest, the usual
choice when no class's errors cost more than another's. Training (`train.py`,
`train_head.py`) stores the thresholds in config.json; `ImageClassifier` applies them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_THRESHOLD",
    "choose_thresholds",
    "label_accuracy",
    "mean_average_precision",
    "multilabel_metrics",
]

DEFAULT_THRESHOLD = 0.5  # for a class without a positive validation image to choose on


def choose_thresholds(targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Per class, the probability threshold (present when p >= threshold) that maximises
    the class's F1 on held-out (N, C) 0/1 `targets` and `probabilities`."""
    from sklearn.metrics import precision_recall_curve

    targets = np.asarray(targets) > 0.5
    probabilities = np.asarray(probabilities, np.float64)
    thresholds = np.full(targets.shape[1], DEFAULT_THRESHOLD)
    for c in range(targets.shape[1]):
        y, p = targets[:, c], probabilities[:, c]
        if not y.any():
            continue
        precision, recall, cuts = precision_recall_curve(y, p)
        # The last (precision 1, recall 0) point has no threshold.
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        cut = cuts[int(np.argmax(f1))]
        # Any threshold between the cut and the next lower validation score gives the same
        # F1; the midpoint leaves a margin to both, where the cut itself would sit on the
        # lowest accepted positive.
        below = p[p < cut]
        thresholds[c] = (cut + below.max()) / 2 if len(below) else cut
    return thresholds


def label_accuracy(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """Share of right per-class decisions at probability 0.5 (1 - Hamming loss; Keras's
    `binary_accuracy`): the "accuracy" that multi-label training logs."""
    return float(((np.asarray(probabilities) > 0.5) == (np.asarray(targets) > 0.5)).mean())


def mean_average_precision(targets: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Macro average precision over the classes with a positive image (None without any):
    the threshold-free score that picks a multi-label run's best epoch."""
    from sklearn.metrics import average_precision_score

    targets = np.asarray(targets) > 0.5
    present = np.flatnonzero(targets.any(axis=0))
    if not len(present):
        return None
    scores = average_precision_score(
        targets[:, present], np.asarray(probabilities)[:, present], average=None
    )
    return float(np.mean(scores))


def multilabel_metrics(
    targets: np.ndarray,
    probabilities: np.ndarray,
    predicted: np.ndarray,
    class_names: list[str],
    thresholds: np.ndarray,
) -> dict[str, Any]:
    """What `imgcls evaluate` reports for a multi-label model: `mAP` (macro average
    precision over the classes that occur), `micro_f1`, `macro_f1` (over the classes that
    occur), `subset_accuracy` (every label right), `hamming_loss` (share of wrong
    image-class decisions) and `per_class` (precision, recall, f1, ap, support, threshold;
    for the classes that occur or are predicted). Arrays are (N, C) over `class_names`."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        hamming_loss,
        precision_recall_fscore_support,
    )

    targets = np.asarray(targets) > 0.5
    predicted = np.asarray(predicted, bool)
    if not len(targets):
        return {"mAP": 0.0, "micro_f1": 0.0, "macro_f1": 0.0, "subset_accuracy": 0.0,
                "hamming_loss": 0.0, "per_class": {}}  # fmt: skip
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predicted, average=None, zero_division=0
    )
    occurring = support > 0
    per_class, aps = {}, []
    for c in np.flatnonzero(occurring | predicted.any(axis=0)):
        ap = average_precision_score(targets[:, c], probabilities[:, c]) if occurring[c] else None
        if ap is not None:
            aps.append(ap)  # the classes that occur, in order: what mAP averages
        per_class[class_names[c]] = {
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "ap": None if ap is None else float(ap),
            "support": int(support[c]),
            "threshold": float(thresholds[c]),
        }
    return {
        "mAP": float(np.mean(aps)) if aps else 0.0,  # = mean_average_precision, once
        "micro_f1": float(f1_score(targets, predicted, average="micro", zero_division=0)),
        "macro_f1": float(np.mean(f1[occurring])) if occurring.any() else 0.0,
        "subset_accuracy": float(accuracy_score(targets, predicted)),
        "hamming_loss": float(hamming_loss(targets, predicted)),
        "per_class": per_class,
    }
