"""Evaluation: a model on a labelled folder → accuracy, top-5, per-class metrics,
confusion matrix, calibration (ECE before and after the run's temperature), the
coverage / accuracy operating points of the "unknown" rule, and the pictures that explain
them.

Metrics come from scikit-learn; this module maps folder names to model classes, runs the
model through `ImageClassifier.classify_paths` (batched, failures isolated) and writes the
report files.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.calibration import (
    ECE_BINS,
    expected_calibration_error,
    operating_points,
    uncalibrated,
)
from imgcls.checkpoint import make_dir, write_json, write_text
from imgcls.classifier import ImageClassifier
from imgcls.data import SPLITS, UNSPLIT, DataError, scan_dataset
from imgcls.errors import EvaluationError

__all__ = [
    "Evaluation",
    "EvaluationError",
    "ImageResult",
    "evaluate",
    "find_labelled_images",
    "write_report",
]

OTHER = "(other)"  # predictions of a class the data set does not have
TOP_K = 5


@dataclass(frozen=True)
class ImageResult:
    """One evaluated image."""

    path: str
    true: int  # index into `Evaluation.classes`
    predicted: int  # index into `Evaluation.classes` (OTHER for a class not in the data)
    predicted_label: str  # the model's own top-1 name, even for OTHER
    score: float  # top-1 probability (calibrated by the run's temperature)
    raw_score: float  # top-1 before temperature scaling
    top_k_hit: bool  # the true class among the model's top 5
    unknown: bool  # the model's own rule said "unknown"


@dataclass
class Evaluation:
    """Everything `imgcls evaluate` reports for one model on one data set."""

    model: str
    classes: list[str]  # data set classes, then OTHER when some prediction fell outside
    images: list[ImageResult] = field(default_factory=list)  # in evaluation order
    failed: list[dict[str, str]] = field(default_factory=list)  # {"path", "error"}
    seconds: float = 0.0
    temperature: float = 1.0
    reject: dict[str, Any] | None = None  # the model's rule: score, threshold

    @property
    def true(self) -> list[int]:
        return [image.true for image in self.images]

    @property
    def predicted(self) -> list[int]:
        return [image.predicted for image in self.images]

    def column(self, name: str, dtype: type = float) -> np.ndarray:
        """One field of every image (an `ImageResult` attribute), as an array."""
        return np.asarray([getattr(image, name) for image in self.images], dtype)

    def correct(self) -> np.ndarray:
        """Whether each image's top-1 is its true class."""
        return self.column("true", int) == self.column("predicted", int)

    def metrics(self) -> dict[str, Any]:
        """The JSON object of INTERFACE.md: accuracy, per-class metrics, confusion matrix."""
        from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

        labels = list(range(len(self.classes)))
        true, predicted = self.column("true", int), self.column("predicted", int)
        data_labels = sorted(set(true.tolist()))
        precision, recall, f1, support = precision_recall_fscore_support(
            true, predicted, labels=labels, zero_division=0
        )
        num_images = len(self.images)
        result: dict[str, Any] = {
            "model": self.model,
            "num_images": num_images,
            "accuracy": float(self.correct().mean()) if num_images else 0.0,
            "classes": self.classes,
            "confusion_matrix": confusion_matrix(true, predicted, labels=labels).tolist(),
            "per_class": {
                self.classes[i]: {
                    "precision": float(precision[i]),
                    "recall": float(recall[i]),
                    "f1": float(f1[i]),
                    "support": int(support[i]),
                }
                for i in data_labels
            },
            "macro_f1": float(np.mean([f1[i] for i in data_labels])) if data_labels else 0.0,
            "expected_calibration_error": expected_calibration_error(
                self.column("score"), self.correct()
            ),
            "images_per_s": num_images / self.seconds if self.seconds else 0.0,
            "failed": self.failed,
        }
        result.update(self.trust_metrics())
        if len([c for c in self.classes if c != OTHER]) >= TOP_K:
            top_k_hit = self.column("top_k_hit", bool)
            result["top5_accuracy"] = float(np.mean(top_k_hit)) if num_images else 0.0
        return result

    def trust_metrics(self) -> dict[str, Any]:
        """Calibration before/after the temperature, the operating points of a threshold on
        the top-1 probability, and what the model's own "unknown" rule did."""
        correct = self.correct()
        scores = self.column("score")
        result: dict[str, Any] = {
            "temperature": self.temperature,
            "ece": expected_calibration_error(scores, correct),
            "ece_uncalibrated": expected_calibration_error(self.column("raw_score"), correct),
            "operating_points": operating_points(scores, correct),
        }
        if self.reject is not None:
            unknown = self.column("unknown", bool)
            answered = ~unknown
            result["reject"] = {
                **self.reject,
                "unknown_rate": float(unknown.mean()) if len(unknown) else 0.0,
                "accuracy_answered": float(correct[answered].mean()) if answered.any() else None,
            }
        return result


def find_labelled_images(data: str | os.PathLike, split: str = "test") -> list[tuple[Path, str]]:
    """(image, class folder name) pairs from DATA/<split>/<class>/*, or DATA/<class>/* when
    DATA holds class folders only; read as training reads them (`imgcls.data`)."""
    try:
        layout = scan_dataset(data, SPLITS if split in SPLITS else (*SPLITS, split))
    except DataError as exc:
        raise EvaluationError(str(exc)) from None
    if layout.kind == "splits" and split not in layout.splits:
        raise EvaluationError(
            f"{layout.root}: has no {split}/ folder (choose one with `split`)",
            parameters=("split",),
        )
    samples = layout.splits[split if layout.kind == "splits" else UNSPLIT]
    if not samples:
        split_root = layout.root / split if layout.kind == "splits" else layout.root
        raise EvaluationError(f"{split_root}: no images in class folders (expected <class>/*)")
    return samples


def evaluate(
    classifier: ImageClassifier,
    samples: list[tuple[Path, str]],
    progress: Callable[[int], None] | None = None,
    scored: Iterable[tuple[str, tuple[np.ndarray, float] | Exception]] | None = None,
) -> Evaluation:
    """Run `classifier` on labelled `samples` and collect what the metrics need.

    `scored`: what `classifier.scored_paths` gives for the samples' paths, when something
    else runs the model (`imgcls.ray.RayClassifier`); by default it is called here."""
    folder_to_index = _match_classes(classifier, sorted({name for _, name in samples}))
    classes = [classifier.labels.names[i] for i in folder_to_index.values()]
    model_to_data = {model_index: i for i, model_index in enumerate(folder_to_index.values())}
    by_path = {str(path): name for path, name in samples}

    evaluation = Evaluation(classifier.name, classes, temperature=classifier.temperature)
    if classifier.rejection is not None:
        rule = classifier.rejection
        evaluation.reject = {"score": rule.score, "threshold": rule.threshold}
    start = time.perf_counter()
    if scored is None:
        scored = classifier.scored_paths([p for p, _ in samples])
    for path, outcome in scored:
        if progress is not None:
            progress(1)
        if isinstance(outcome, Exception):
            evaluation.failed.append({"path": path, "error": str(outcome)})
            continue
        probabilities, reject_score = outcome
        unknown = classifier.unknown(probabilities[None], np.asarray([reject_score]))
        ranked = classifier.top_predictions(probabilities[None], top_k=TOP_K)[0]
        true_model_index = folder_to_index[by_path[path]]
        top = ranked[0]
        if top.index not in model_to_data:
            if OTHER not in classes:
                classes.append(OTHER)
            predicted = classes.index(OTHER)
        else:
            predicted = model_to_data[top.index]
        raw_score = uncalibrated(probabilities[None], classifier.temperature).max()
        evaluation.images.append(
            ImageResult(
                path=path,
                true=model_to_data[true_model_index],
                predicted=predicted,
                predicted_label=top.label,
                score=top.score,
                raw_score=float(raw_score),
                top_k_hit=any(p.index == true_model_index for p in ranked),
                unknown=bool(unknown[0]),
            )
        )
    evaluation.seconds = time.perf_counter() - start
    return evaluation


def _match_classes(classifier: ImageClassifier, folders: list[str]) -> dict[str, int]:
    """Model output index of each class folder, by class id (WordNet id) or by name."""
    lookup: dict[str, int] = {}
    for i, (class_id, name) in enumerate(
        zip(classifier.labels.class_ids, classifier.labels.names, strict=True)
    ):
        lookup.setdefault(name.lower(), i)
        lookup[class_id.lower()] = i
    unknown = [f for f in folders if f.lower() not in lookup]
    if unknown:
        raise EvaluationError(
            f"class folder(s) {unknown[:5]} are not classes of {classifier.name} "
            f"(its classes include {list(classifier.labels.names[:3])}...)"
        )
    return {folder: lookup[folder.lower()] for folder in folders}


def write_report(evaluation: Evaluation, metrics: dict[str, Any], out: str | os.PathLike) -> None:
    """metrics.json, predictions.csv and the plots into `out`, each written atomically
    (WriteError when one cannot be)."""
    from imgcls import plots

    out = make_dir(out)
    write_json(out / "metrics.json", metrics)
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["path", "true", "predicted", "score", "unknown"])
    for image in evaluation.images:
        writer.writerow(
            [
                image.path,
                evaluation.classes[image.true],
                image.predicted_label,
                f"{image.score:.6f}",
                image.unknown,
            ]
        )
    write_text(out / "predictions.csv", rows.getvalue())
    plots.confusion_matrix(
        np.asarray(metrics["confusion_matrix"]), evaluation.classes, out / "confusion_matrix.png"
    )
    plots.mistakes(_most_confident_mistakes(evaluation), out / "mistakes.png")
    scores = evaluation.column("score")
    correct = evaluation.correct()
    plots.reliability(
        scores,
        correct,
        ECE_BINS,
        out / "reliability.png",
        before=evaluation.column("raw_score") if evaluation.temperature != 1.0 else None,
    )
    plots.coverage_accuracy(scores, correct, out / "coverage_accuracy.png")


def _most_confident_mistakes(
    evaluation: Evaluation, limit: int = 16
) -> list[tuple[str, str, str, float]]:
    wrong = [image for image in evaluation.images if image.true != image.predicted]
    wrong.sort(key=lambda image: image.score, reverse=True)
    return [
        (image.path, evaluation.classes[image.true], image.predicted_label, image.score)
        for image in wrong[:limit]
    ]
