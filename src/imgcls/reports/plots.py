"""Pictures of results, as PNG files: evaluation reports and training curves.

Figures are `matplotlib.figure.Figure` objects saved with `savefig`, never pyplot: no
backend is chosen and no global figure list is touched, so drawing here leaves a
notebook's or a script's matplotlib as it was, and needs no display.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from imgcls.data.images import load_image
from imgcls.errors import ImageError
from imgcls.files import atomic_write
from imgcls.trust.calibration import MIN_SCORE_GRID, expected_calibration_error, operating_points

__all__ = [
    "conformal_levels",
    "confusion_matrix",
    "coverage_accuracy",
    "curves",
    "lr_find",
    "mistakes",
    "param_importance",
    "pr_curves",
    "reliability",
]

# Above this many classes tick labels would overlap: they are hidden.
MAX_LABELLED_CLASSES = 30


def confusion_matrix(matrix: np.ndarray, classes: list[str], path: str | os.PathLike) -> None:
    """Row-normalised confusion matrix (each true class sums to 1)."""
    n = len(classes)
    totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, totals, out=np.zeros(matrix.shape, float), where=totals > 0)
    size = min(4 + 0.35 * n, 16)
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.subplots()
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= MAX_LABELLED_CLASSES:
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        if n <= 12:
            for (i, j), count in np.ndenumerate(matrix):
                colour = "white" if normalised[i, j] > 0.5 else "black"
                ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=8)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title(f"Confusion matrix ({int(matrix.sum())} images)")
    _save(fig, path)


def mistakes(
    items: list[tuple[str, str, str, float]],
    path: str | os.PathLike,
    title: str = "Most confident mistakes",
) -> None:
    """A grid of (image path, true, predicted, score): the most confident errors first."""
    columns = 4
    rows = max(1, math.ceil(len(items) / columns))
    fig = Figure(figsize=(columns * 3, rows * 3.3))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image_path, true, predicted, score) in zip(axes.flat, items, strict=False):
        try:
            ax.imshow(load_image(image_path))
        except (ImageError, OSError):
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
        ax.set_title(
            f"true: {true}\npred: {predicted} ({score:.0%})", fontsize=9, color="firebrick"
        )
    if not items:
        axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=14)
    fig.suptitle(title)
    _save(fig, path)


def pr_curves(
    targets: np.ndarray,
    scores: np.ndarray,
    classes: list[str],
    thresholds: np.ndarray,
    path: str | os.PathLike,
) -> None:
    """A multi-label model's precision-recall curve for each class that occurs ((N, C)
    0/1 targets and scores), its average precision in the legend and a dot where the
    class's threshold operates."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig = Figure(figsize=(7, 5.5))
    ax = fig.subplots()
    occurring = [c for c in range(len(classes)) if targets[:, c].any()]
    for c in occurring:
        precision, recall, _ = precision_recall_curve(targets[:, c], scores[:, c])
        ap = average_precision_score(targets[:, c], scores[:, c])
        (line,) = ax.step(recall, precision, where="post", label=f"{classes[c]} (AP {ap:.3f})")
        decided = scores[:, c] >= thresholds[c]
        hits = (decided & (targets[:, c] > 0)).sum()
        ax.plot(
            hits / targets[:, c].sum(), hits / max(decided.sum(), 1), "o", color=line.get_color()
        )
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if len(occurring) <= MAX_LABELLED_CLASSES:
        ax.legend(loc="lower left", fontsize=8)
    ax.set_title(f"Precision-recall per class (dots: thresholds; {len(targets)} images)")
    _save(fig, path)


def reliability(
    confidence: np.ndarray,
    correct: np.ndarray,
    bins: int,
    path: str | os.PathLike,
    before: np.ndarray | None = None,
) -> None:
    """Reliability diagram: accuracy against confidence per bin, and the diagonal; with
    `before` (the confidences before temperature scaling) its curve too."""

    edges = np.linspace(0, 1, bins + 1)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    accuracy = [correct[index == b].mean() if (index == b).any() else 0.0 for b in range(bins)]
    counts = [int((index == b).sum()) for b in range(bins)]
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ece = expected_calibration_error(confidence, correct, bins)
    ax.bar(
        edges[:-1],
        accuracy,
        width=1 / bins,
        align="edge",
        edgecolor="black",
        label=f"accuracy (ECE {ece:.3f})",
    )
    if before is not None:
        index_before = np.minimum((before * bins).astype(int), bins - 1)
        filled = [b for b in range(bins) if (index_before == b).any()]
        ax.plot(
            [edges[b] + 0.5 / bins for b in filled],
            [correct[index_before == b].mean() for b in filled],
            "o-",
            color="darkorange",
            label=f"before temperature (ECE "
            f"{expected_calibration_error(before, correct, bins):.3f})",
        )
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    for b, count in enumerate(counts):
        if count:
            ax.text(edges[b] + 0.5 / bins, 0.02, str(count), ha="center", fontsize=7, rotation=90)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    ax.set_title("Reliability")
    _save(fig, path)


def coverage_accuracy(scores: np.ndarray, correct: np.ndarray, path: str | os.PathLike) -> None:
    """Accuracy on the images answered against the share answered, as the threshold on
    the top-1 probability rises (a few thresholds marked)."""

    order = np.argsort(-scores, kind="stable")
    answered = np.arange(1, len(scores) + 1)
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    if len(scores):
        ax.plot(answered / len(scores), np.cumsum(correct[order]) / answered, "-", label="model")
    # Thresholds that answer the same images share one dot, labelled with their range.
    groups: list[list[dict]] = []
    for point in operating_points(scores, correct, MIN_SCORE_GRID):
        if point["accuracy"] is None:
            continue
        if groups and groups[-1][0]["answered"] == point["answered"]:
            groups[-1].append(point)
        else:
            groups.append([point])
    for group in groups:
        first, last = group[0], group[-1]
        label = f"{first['threshold']:g}" + (f"–{last['threshold']:g}" if len(group) > 1 else "")
        ax.plot(first["coverage"], first["accuracy"], "o", color="firebrick", markersize=4)
        ax.annotate(
            label,
            (first["coverage"], first["accuracy"]),
            textcoords="offset points",
            xytext=(3, -10),
            fontsize=7,
        )
    lowest = min((g[0]["accuracy"] for g in groups), default=0.0)
    ax.set_ylim(max(0.0, lowest - 0.05), 1.01)
    ax.set_xlabel("coverage (share of images answered)")
    ax.set_ylabel("accuracy on the images answered")
    ax.set_xlim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("Coverage vs accuracy (dots: --min-score)")
    _save(fig, path)


def conformal_levels(
    levels: np.ndarray, coverage: np.ndarray, sizes: np.ndarray, path: str | os.PathLike
) -> None:
    """Prediction sets against the coverage level asked for: the empirical coverage (on
    the diagonal when the guarantee holds) and the mean set size."""
    fig = Figure(figsize=(9, 4))
    left, right = fig.subplots(1, 2)
    left.plot(levels, coverage, "o-", markersize=3, label="measured")
    left.plot([levels[0], 1], [levels[0], 1], "--", color="gray", label="asked (guarantee)")
    left.set_xlabel("coverage level asked")
    left.set_ylabel("share of true labels in the set")
    left.legend(loc="upper left")
    left.grid(alpha=0.3)
    right.plot(levels, sizes, "o-", markersize=3, color="darkorange")
    right.set_xlabel("coverage level asked")
    right.set_ylabel("mean prediction set size")
    right.grid(alpha=0.3)
    fig.suptitle("Conformal prediction sets")
    _save(fig, path)


def curves(rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Loss and accuracy per epoch (rows of metrics.csv): train, validation and, for a run
    with EMA, the averaged weights on validation; a multi-label run's accuracy is per
    label, drawn with its validation mAP."""
    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    multi_label = "val_map" in rows[-1]
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
        ax.plot(epochs, [r[f"train_{metric}"] for r in rows], "o-", label="train")
        if rows[-1]["val_acc"] is not None:
            ax.plot(epochs, [r[f"val_{metric}"] for r in rows], "o-", label="val")
        if "ema_val_acc" in rows[-1]:
            ax.plot(epochs, [r[f"ema_val_{metric}"] for r in rows], "o-", label="val (EMA)")
        if metric == "acc" and multi_label and rows[-1]["val_map"] is not None:
            ax.plot(epochs, [r["val_map"] for r in rows], "s--", label="val mAP")
        ax.set_xlabel("epoch")
        title = "per-label accuracy, mAP" if multi_label else "accuracy"
        ax.set_title("loss" if metric == "loss" else title)
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def lr_find(lrs: list[float], losses: list[float], suggested: int, path: str | os.PathLike) -> None:
    """The LR range test: smoothed loss against learning rate (log scale), with the
    suggested rate (index `suggested`) marked."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(lrs, losses)
    ax.plot([lrs[suggested]], [losses[suggested]], "ro", label=f"suggested {lrs[suggested]:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def param_importance(importances: dict[str, float], path: str | os.PathLike) -> None:
    """A hyper-parameter search's parameters by importance (shares of the score's
    variance, as Optuna's fANOVA estimates them), the most important on top."""
    names = list(importances)[::-1]
    fig = Figure(figsize=(6, 1 + 0.4 * len(names)))
    ax = fig.subplots()
    ax.barh(names, [importances[name] for name in names])
    ax.set_xlabel("importance for the validation score")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3, axis="x")
    _save(fig, path)


def _save(fig: Figure, path: str | os.PathLike) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
