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
import json
import os
import time
from collections.abc import Callable
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
from imgcls.classifier import ImageClassifier
from imgcls.images import list_images

__all__ = ["EvaluationError", "Evaluation", "evaluate", "find_labelled_images", "write_report"]

OTHER = "(other)"  # predictions of a class the data set does not have
TOP_K = 5


class EvaluationError(ValueError):
    """A data set that cannot be evaluated with this model; the message says why."""


@dataclass
class Evaluation:
    """Everything `imgcls evaluate` reports for one model on one data set."""

    model: str
    classes: list[str]  # data set classes, then OTHER when some prediction fell outside
    true: list[int]  # per image, index into `classes`
    predicted: list[int]
    top_k_hit: list[bool]  # the true class among the model's top 5
    scores: list[float]  # top-1 probability (calibrated by the run's temperature)
    predicted_labels: list[str]  # the model's own top-1 name, even for OTHER
    paths: list[str]
    failed: list[dict[str, str]] = field(default_factory=list)  # {"path", "error"}
    seconds: float = 0.0
    raw_scores: list[float] = field(default_factory=list)  # top-1 before temperature scaling
    unknown: list[bool] = field(default_factory=list)  # the model's own rule said "unknown"
    temperature: float = 1.0
    reject: dict[str, Any] | None = None  # the model's rule: score, threshold

    def metrics(self) -> dict[str, Any]:
        """The JSON object of INTERFACE.md: accuracy, per-class metrics, confusion matrix."""
        from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

        labels = list(range(len(self.classes)))
        data_labels = sorted(set(self.true))
        true, predicted = np.asarray(self.true), np.asarray(self.predicted)
        precision, recall, f1, support = precision_recall_fscore_support(
            true, predicted, labels=labels, zero_division=0
        )
        num_images = len(self.true)
        result: dict[str, Any] = {
            "model": self.model,
            "num_images": num_images,
            "accuracy": float((true == predicted).mean()) if num_images else 0.0,
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
                np.asarray(self.scores), true == predicted
            ),
            "images_per_s": num_images / self.seconds if self.seconds else 0.0,
            "failed": self.failed,
        }
        result.update(self.trust_metrics())
        if len([c for c in self.classes if c != OTHER]) >= TOP_K:
            result["top5_accuracy"] = float(np.mean(self.top_k_hit)) if num_images else 0.0
        return result

    def trust_metrics(self) -> dict[str, Any]:
        """Calibration before/after the temperature, the operating points of a threshold on
        the top-1 probability, and what the model's own "unknown" rule did."""
        correct = np.asarray(self.true) == np.asarray(self.predicted)
        result: dict[str, Any] = {
            "temperature": self.temperature,
            "ece": expected_calibration_error(np.asarray(self.scores), correct),
            "ece_uncalibrated": expected_calibration_error(np.asarray(self.raw_scores), correct),
            "operating_points": operating_points(np.asarray(self.scores), correct),
        }
        if self.reject is not None:
            unknown = np.asarray(self.unknown, bool)
            answered = ~unknown
            result["reject"] = {
                **self.reject,
                "unknown_rate": float(unknown.mean()) if len(unknown) else 0.0,
                "accuracy_answered": float(correct[answered].mean()) if answered.any() else None,
            }
        return result


def find_labelled_images(data: str | os.PathLike, split: str = "test") -> list[tuple[Path, str]]:
    """(image, class folder name) pairs from DATA/<split>/<class>/*, or DATA/<class>/* when
    DATA holds class folders only."""
    root = Path(data)
    if not root.is_dir():
        raise EvaluationError(f"{root}: no such data directory")
    split_root = root / split if (root / split).is_dir() else root
    if split_root == root and any((root / s).is_dir() for s in ("train", "val", "test")):
        raise EvaluationError(f"{root}: has no {split}/ folder (choose one with --split)")
    class_dirs = sorted(
        p for p in split_root.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    samples = [(path, d.name) for d in class_dirs for path in list_images(d)]
    if not samples:
        raise EvaluationError(f"{split_root}: no images in class folders (expected <class>/*)")
    return samples


def evaluate(
    classifier: ImageClassifier,
    samples: list[tuple[Path, str]],
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Run `classifier` on labelled `samples` and collect what the metrics need."""
    folder_to_index = _match_classes(classifier, sorted({name for _, name in samples}))
    classes = [classifier.labels.names[i] for i in folder_to_index.values()]
    model_to_data = {model_index: i for i, model_index in enumerate(folder_to_index.values())}
    by_path = {str(path): name for path, name in samples}

    evaluation = Evaluation(classifier.name, classes, [], [], [], [], [], [])
    evaluation.temperature = classifier.temperature
    if classifier.rejection is not None:
        rule = classifier.rejection
        evaluation.reject = {"score": rule.score, "threshold": rule.threshold}
    start = time.perf_counter()
    for path, outcome in classifier.scored_paths([p for p, _ in samples]):
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
        evaluation.paths.append(path)
        evaluation.true.append(model_to_data[true_model_index])
        evaluation.predicted.append(predicted)
        evaluation.top_k_hit.append(any(p.index == true_model_index for p in ranked))
        evaluation.scores.append(top.score)
        evaluation.raw_scores.append(
            float(uncalibrated(probabilities[None], classifier.temperature).max())
        )
        evaluation.unknown.append(bool(unknown[0]))
        evaluation.predicted_labels.append(top.label)
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
    """metrics.json, predictions.csv and the plots into `out`."""
    from imgcls import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
    with open(out / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "true", "predicted", "score", "unknown"])
        for path, t, label, s, unknown in zip(
            evaluation.paths,
            evaluation.true,
            evaluation.predicted_labels,
            evaluation.scores,
            evaluation.unknown,
            strict=True,
        ):
            writer.writerow([path, evaluation.classes[t], label, f"{s:.6f}", unknown])
    plots.confusion_matrix(
        np.asarray(metrics["confusion_matrix"]), evaluation.classes, out / "confusion_matrix.png"
    )
    plots.mistakes(_most_confident_mistakes(evaluation), out / "mistakes.png")
    correct = np.asarray(evaluation.true) == np.asarray(evaluation.predicted)
    plots.reliability(
        np.asarray(evaluation.scores),
        correct,
        ECE_BINS,
        out / "reliability.png",
        before=np.asarray(evaluation.raw_scores) if evaluation.temperature != 1.0 else None,
    )
    plots.coverage_accuracy(np.asarray(evaluation.scores), correct, out / "coverage_accuracy.png")


def _most_confident_mistakes(
    evaluation: Evaluation, limit: int = 16
) -> list[tuple[str, str, str, float]]:
    wrong = [
        (evaluation.scores[i], i)
        for i in range(len(evaluation.true))
        if evaluation.true[i] != evaluation.predicted[i]
    ]
    wrong.sort(reverse=True)
    return [
        (
            evaluation.paths[i],
            evaluation.classes[evaluation.true[i]],
            evaluation.predicted_labels[i],
            score,
        )
        for score, i in wrong[:limit]
    ]
