"""Likely-mislabelled images: which training images does a model, that never saw them,
find least likely to carry their given label?

Confident learning (Northcutt et al., 2021; what cleanlab does) needs out-of-sample
predicted probabilities for every image. Here they come fast: pooled features of a frozen
pretrained backbone (EfficientNet-Lite0 by default), then k-fold logistic regression on
them (scikit-learn's `cross_val_predict`), so each image is scored by a model fitted on the
other folds. Images are ranked by self-confidence, the probability of the given label
(cleanlab's `rank_by="self_confidence"`), lowest first; those whose out-of-fold prediction
differs from the given label are the issues reported (cleanlab's "predicted_neq_given").

The CSV has a `path` column first (relative to DATA), so
`imgcls doctor DATA --quarantine DIR --only label_issues.csv` moves the flagged files.
"""

from __future__ import annotations

import csv
import html
import io
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.data.datasets import find_splits, relative_path
from imgcls.errors import DataError, DoctorError
from imgcls.files import make_dir, write_text
from imgcls.inference.classifier import ImageClassifier
from imgcls.models.registry import DEFAULT_MODEL
from imgcls.reports.gallery import Thumbnails

__all__ = [
    "LabelAudit",
    "LabelIssue",
    "audit_labels",
    "out_of_fold_probabilities",
    "rank_by_self_confidence",
    "write_audit",
]

DEFAULT_FOLDS = 5
CSV_NAME, HTML_NAME = "label_issues.csv", "label_issues.html"
THUMBNAIL_SIDE = 160  # pixels, the longer side of a gallery image


@dataclass
class LabelIssue:
    """One image, as the out-of-fold model sees it."""

    path: str  # relative to DATA
    given_label: str
    suggested_label: str  # the out-of-fold model's top class
    self_confidence: float  # out-of-fold probability of the given label
    margin: float  # that probability minus the best other class's (negative: disagrees)

    @property
    def flagged(self) -> bool:
        return self.suggested_label != self.given_label


@dataclass
class LabelAudit:
    data: str
    classes: list[str]
    folds: int
    model: str
    ranked: list[LabelIssue]  # every image, least likely given label first
    skipped: list[str] = field(default_factory=list)  # files that did not decode
    seconds: float = 0.0

    @property
    def issues(self) -> list[LabelIssue]:
        """The images whose out-of-fold prediction disagrees with their label, worst first."""
        return [item for item in self.ranked if item.flagged]

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        issues = self.issues[:top] if top is not None else self.issues
        return {
            "data": self.data,
            "model": self.model,
            "num_images": len(self.ranked),
            "classes": self.classes,
            "folds": self.folds,
            "num_issues": len(self.issues),
            "issues": [asdict(item) for item in issues],
            "skipped": self.skipped,
            "seconds": self.seconds,
        }


def out_of_fold_probabilities(
    features: np.ndarray, labels: np.ndarray, folds: int = DEFAULT_FOLDS, seed: int = 0
) -> np.ndarray:
    """(N, C) probabilities of each image from a logistic regression fitted on the other
    stratified folds. Fewer folds when the smallest class has fewer images than `folds`."""
    # scikit-learn loads only for `doctor --labels`, not for every `doctor`
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    smallest = int(np.bincount(labels).min())
    if smallest < 2:
        raise DataError("a label audit needs at least 2 images in every class to hold one out")
    splitter = StratifiedKFold(min(folds, smallest), shuffle=True, random_state=seed)
    # Strong L2 (C=0.1): with far more features (1280) than images per class, a weakly
    # regularised model fits the flipped labels of its own folds too readily.
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    return cross_val_predict(model, features, labels, cv=splitter, method="predict_proba")


def rank_by_self_confidence(
    probabilities: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, self-confidence, margin): image indices with the least likely given label
    first (ties broken by margin), and both scores per image."""
    rows = np.arange(len(labels))
    self_confidence = probabilities[rows, labels]
    others = probabilities.copy()
    others[rows, labels] = -np.inf
    margin = self_confidence - others.max(axis=1)
    order = np.lexsort((margin, self_confidence))
    return order, self_confidence, margin


def audit_labels(
    data: str | os.PathLike,
    model: str = DEFAULT_MODEL,
    folds: int = DEFAULT_FOLDS,
    batch_size: int = 32,
    seed: int = 0,
    img_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    label_delim: str | None = None,
    skip_missing: bool = False,
) -> LabelAudit:
    """Rank every image of DATA (all splits; a folder or a single-label label file) by how
    unlikely its class is under an out-of-fold model on frozen `model` features
    (`img_size`: input size, None for the model's own; smaller is faster for small
    images)."""

    started = time.perf_counter()
    splits = find_splits(
        data, val_split=0.0, seed=seed, label_delim=label_delim, skip_missing=skip_missing
    )
    if splits.multi_label:
        raise DoctorError(
            f"{data}: images with several labels; the label audit ranks single-label data"
        )
    root = Path(data) if Path(data).is_dir() else Path(data).parent  # what paths start from
    samples = splits.train + splits.val + splits.test
    backbone = ImageClassifier(model, batch_size=batch_size, img_size=img_size)
    kept, vectors, skipped = [], [], [str(p) for p, _ in splits.skipped]
    for (path, label), (_, outcome) in zip(
        samples, backbone.features_paths([p for p, _ in samples]), strict=True
    ):
        if progress is not None:
            progress(1)
        if isinstance(outcome, Exception):  # a file that changed since the scan
            skipped.append(str(path))
            continue
        kept.append((path, label))
        vectors.append(outcome)
    labels = np.array([label for _, label in kept])
    probabilities = out_of_fold_probabilities(np.stack(vectors), labels, folds, seed)
    order, self_confidence, margin = rank_by_self_confidence(probabilities, labels)
    names = splits.class_names
    ranked = [
        LabelIssue(
            path=relative_path(kept[i][0], root),
            given_label=names[labels[i]],
            suggested_label=names[int(probabilities[i].argmax())],
            self_confidence=float(self_confidence[i]),
            margin=float(margin[i]),
        )
        for i in order
    ]
    used_folds = min(folds, int(np.bincount(labels).min()))
    return LabelAudit(
        str(root), names, used_folds, backbone.name, ranked, skipped,
        time.perf_counter() - started,
    )  # fmt: skip


def write_audit(audit: LabelAudit, out: str | os.PathLike, top: int | None = None) -> list[Path]:
    """label_issues.csv (path first, for `doctor --quarantine --only`) and
    label_issues.html (a gallery: image, given label, suggested label, score)."""

    out = make_dir(out)
    issues = audit.issues[:top] if top is not None else audit.issues
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["path", "given_label", "suggested_label", "score", "margin"])
    for item in issues:
        writer.writerow(
            [
                item.path,
                item.given_label,
                item.suggested_label,
                f"{item.self_confidence:.6f}",
                f"{item.margin:.6f}",
            ]
        )
    csv_path = out / CSV_NAME
    write_text(csv_path, rows.getvalue())
    html_path = out / HTML_NAME
    write_text(html_path, _gallery(audit, issues))
    return [csv_path, html_path]


def _gallery(audit: LabelAudit, issues: list[LabelIssue]) -> str:
    """A self-contained HTML page: thumbnails inlined as JPEG data URIs."""
    thumbnails = Thumbnails(THUMBNAIL_SIDE)
    cards = [
        thumbnails.figure(
            Path(audit.data) / item.path,
            f"<code>{html.escape(item.path)}</code><br>"
            f"given <b>{html.escape(item.given_label)}</b> → suggested "
            f"<b>{html.escape(item.suggested_label)}</b><br>"
            f"p(given) {item.self_confidence:.3f}, margin {item.margin:+.3f}",
        )
        for item in issues
    ]
    title = f"Likely mislabelled images in {html.escape(audit.data)}"
    summary = (
        f"{len(audit.issues)} of {len(audit.ranked)} images: the out-of-fold model "
        f"({html.escape(audit.model)} features, {audit.folds}-fold logistic regression) "
        f"prefers another class. Least likely given label first."
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; }}
main {{ display: flex; flex-wrap: wrap; gap: 1rem; }}
figure {{ margin: 0; width: 200px; font-size: 0.8rem; }}
img {{ max-width: {THUMBNAIL_SIDE}px; max-height: {THUMBNAIL_SIDE}px; display: block; }}
code {{ word-break: break-all; }}
</style></head>
<body><h1>{title}</h1><p>{summary}</p>
<main>
{chr(10).join(cards) or "<p>No likely mislabelled images.</p>"}
</main></body></html>
"""
