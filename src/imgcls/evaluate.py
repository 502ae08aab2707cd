"""Evaluation: a model on a labelled folder or label file → accuracy, top-5, per-class
metrics, confusion matrix, calibration (ECE before and after the run's temperature), the
coverage / accuracy operating points of the "unknown" rule, and the pictures that explain
them. A multi-label model gets the multi-label metrics instead (`MultiLabelEvaluation`:
mAP, micro/macro F1, subset accuracy, Hamming loss; precision-recall curves and its most
confident false positives and negatives).

Metrics come from scikit-learn; this module maps class names to model classes, runs the
model through `ImageClassifier.scored_paths` (batched, failures isolated) and writes the
report files.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.data.datasets import SPLITS, UNSPLIT, LabelledFile, scan_dataset
from imgcls.errors import DataError, EvaluationError
from imgcls.files import make_dir, write_json, write_text
from imgcls.inference.classifier import ImageClassifier
from imgcls.trust.calibration import (
    ECE_BINS,
    expected_calibration_error,
    operating_points,
    uncalibrated,
)
from imgcls.trust.conformal import Conformal, level_report
from imgcls.trust.multilabel import multilabel_metrics

__all__ = [
    "Evaluation",
    "ImageResult",
    "MultiLabelEvaluation",
    "evaluate",
    "find_labelled_images",
    "read_split",
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
    skipped: list[dict[str, str]] = field(default_factory=list)  # rows of missing files
    # A model with prediction sets: its conformal calibration, each image's probabilities
    # (over the model's classes) and true class (a model output index).
    conformal: Conformal | None = None
    model_classes: tuple[str, ...] = ()
    probabilities: list[np.ndarray] = field(default_factory=list)
    true_outputs: list[int] = field(default_factory=list)

    def conformal_report(self) -> dict[str, Any] | None:
        """Coverage, set sizes and per-class coverage at each standard level."""
        if self.conformal is None or not self.probabilities:
            return None
        return level_report(
            self.conformal,
            np.stack(self.probabilities),
            np.asarray(self.true_outputs),
            self.model_classes,
        )

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
            "skipped": self.skipped,
        }
        result.update(self.trust_metrics())
        if self.conformal is not None:
            result["conformal"] = self.conformal_report()
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


@dataclass
class MultiLabelEvaluation:
    """Everything `imgcls evaluate` reports for a multi-label model on one data set: (N, C)
    arrays over the model's classes, one row per image that decoded."""

    model: str
    classes: list[str]  # the model's classes, in output order
    thresholds: np.ndarray  # (C,) the model's
    paths: list[str] = field(default_factory=list)
    targets: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    predicted: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))
    failed: list[dict[str, str]] = field(default_factory=list)  # {"path", "error"}
    skipped: list[dict[str, str]] = field(default_factory=list)  # rows of missing files
    seconds: float = 0.0
    conformal: Conformal | None = None  # the model's per-class conformal thresholds

    def conformal_report(self) -> dict[str, Any] | None:
        """Per-class coverage of the present classes and set sizes at each standard level."""
        if self.conformal is None or not self.paths:
            return None
        return level_report(self.conformal, self.probabilities, self.targets, self.classes)

    def metrics(self) -> dict[str, Any]:
        """The multi-label JSON object of INTERFACE.md (see `multilabel_metrics`)."""

        num_images = len(self.paths)
        conformal = {} if self.conformal is None else {"conformal": self.conformal_report()}
        return {
            **conformal,
            "model": self.model,
            "multi_label": True,
            "num_images": num_images,
            "classes": self.classes,
            **multilabel_metrics(
                self.targets, self.probabilities, self.predicted, self.classes, self.thresholds
            ),
            "images_per_s": num_images / self.seconds if self.seconds else 0.0,
            "failed": self.failed,
            "skipped": self.skipped,
        }

    def mistakes(self, false_positives: bool, limit: int = 16) -> list[tuple[str, str, str, float]]:
        """The most confident errors, as `plots.mistakes` items: false positives by the
        highest score of a class not there, false negatives by the lowest score of a class
        that is."""
        wrong = (
            self.predicted & ~self.targets if false_positives else self.targets & ~self.predicted
        )
        rows, columns = np.nonzero(wrong)
        scores = self.probabilities[rows, columns]
        order = np.argsort(-scores if false_positives else scores, kind="stable")[:limit]
        items = []
        for i in order:
            image, c = rows[i], columns[i]
            true = ", ".join(self.classes[j] for j in np.flatnonzero(self.targets[image]))
            said = self.classes[c] if false_positives else f"not {self.classes[c]}"
            items.append((self.paths[image], true, said, float(scores[i])))
        return items


def read_split(
    data: str | os.PathLike,
    split: str = "test",
    *,
    label_delim: str | None = None,
    skip_missing: bool = False,
    nested: bool = False,
) -> tuple[list[LabelledFile], list[dict[str, str]]]:
    """(image, class names) rows from DATA/<split>/<class>/*, DATA/<class>/* when DATA
    holds class folders only, or a label file's `split` rows (all rows without a split
    column); read as training reads them (`imgcls.data.datasets`). And the rows of missing files
    that `skip_missing` set aside, as {"path", "reason"}. `nested`: class folders inside
    parent folders, as a run trained with `--taxonomy folders` reads them."""
    try:
        layout = scan_dataset(
            data,
            SPLITS if split in SPLITS else (*SPLITS, split),
            label_delim=label_delim,
            skip_missing=skip_missing,
            nested=nested,
        )
    except DataError as exc:
        raise EvaluationError(str(exc), parameters=exc.parameters) from None
    if layout.kind == "splits" and split not in layout.splits:
        where = (
            f"{layout.label_file}: has no {split} rows (its splits: {', '.join(layout.splits)})"
            if layout.label_file
            else f"{layout.root}: has no {split}/ folder"
        )
        raise EvaluationError(f"{where} (choose one with `split`)", parameters=("split",))
    samples = layout.splits[split if layout.kind == "splits" else UNSPLIT]
    if not samples:
        expected = (
            "no rows" if layout.label_file else "no images in class folders (expected <class>/*)"
        )
        raise EvaluationError(f"{layout.where(split)}: {expected}")
    skipped = [{"path": str(path), "reason": reason} for path, reason in layout.skipped]
    return samples, skipped


def find_labelled_images(data: str | os.PathLike, split: str = "test") -> list[LabelledFile]:
    """The (image, class names) rows of DATA's `split`, as `read_split` reads them."""
    return read_split(data, split)[0]


def evaluate(
    classifier: ImageClassifier,
    samples: list[LabelledFile],
    progress: Callable[[int], None] | None = None,
    skipped: list[dict[str, str]] | None = None,
    scored: Iterable[tuple[str, tuple[np.ndarray, float] | Exception]] | None = None,
) -> Evaluation | MultiLabelEvaluation:
    """Run `classifier` on labelled `samples` and collect what the metrics need (for a
    multi-label model, a `MultiLabelEvaluation`). `skipped`: rows of missing files, to
    report beside the rest. `scored`: what `classifier.scored_paths` gives for the
    samples' paths, when something else runs the model (`imgcls.ray.RayClassifier`); by
    default it is called here."""
    if classifier.multi_label:
        evaluation = _evaluate_multilabel(classifier, samples, progress, scored)
        evaluation.skipped = list(skipped or [])
        return evaluation
    several = [path for path, names in samples if len(names) > 1]
    if several:
        raise EvaluationError(
            f"{len(several)} image(s) have several labels (such as {several[0]}), and "
            f"{classifier.name} gives one; evaluate a multi-label run on them"
        )
    samples = [(path, names[0]) for path, names in samples]
    folder_to_index = _match_classes(classifier, sorted({name for _, name in samples}))
    classes = [classifier.labels.names[i] for i in folder_to_index.values()]
    model_to_data = {model_index: i for i, model_index in enumerate(folder_to_index.values())}
    by_path = {str(path): name for path, name in samples}

    evaluation = Evaluation(classifier.name, classes, temperature=classifier.temperature)
    evaluation.conformal = classifier.conformal
    evaluation.model_classes = classifier.labels.names
    if classifier.rejection is not None:
        rule = classifier.rejection
        evaluation.reject = {"score": rule.score, "threshold": rule.threshold}
    evaluation.skipped = list(skipped or [])
    start = time.perf_counter()
    for path, (probabilities, reject_score) in _scored(
        classifier, samples, evaluation.failed, progress, scored
    ):
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
        if evaluation.conformal is not None:
            evaluation.probabilities.append(probabilities.astype(np.float32))
            evaluation.true_outputs.append(true_model_index)
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


def _evaluate_multilabel(
    classifier: ImageClassifier,
    samples: list[LabelledFile],
    progress: Callable[[int], None] | None,
    scored: Iterable[tuple[str, tuple[np.ndarray, float] | Exception]] | None = None,
) -> MultiLabelEvaluation:
    """Probabilities and the model's decisions (its thresholds) for every image, beside
    the image's true classes, over the model's classes."""
    index = _match_classes(classifier, sorted({name for _, names in samples for name in names}))
    truth = {str(path): [index[name] for name in names] for path, names in samples}
    evaluation = MultiLabelEvaluation(
        classifier.name, list(classifier.labels.names), classifier.thresholds
    )
    evaluation.conformal = classifier.conformal
    rows, targets = [], []
    start = time.perf_counter()
    for path, (probabilities, _) in _scored(
        classifier, samples, evaluation.failed, progress, scored
    ):
        evaluation.paths.append(path)
        rows.append(probabilities)
        targets.append(np.isin(np.arange(classifier.num_classes), truth[path]))
    evaluation.seconds = time.perf_counter() - start
    if rows:
        evaluation.probabilities = np.stack(rows)
        evaluation.targets = np.stack(targets)
        evaluation.predicted = classifier.present(evaluation.probabilities)
    return evaluation


def _scored(
    classifier: ImageClassifier,
    samples: list,
    failed: list[dict[str, str]],
    progress: Callable[[int], None] | None,
    scored: Iterable[tuple[str, tuple[np.ndarray, float] | Exception]] | None = None,
) -> Iterator[tuple[str, tuple[np.ndarray, float]]]:
    """(path, (probabilities, rejection score)) of each sample that decodes, in order; the
    others go to `failed` as {"path", "error"}. `scored`: as `evaluate` takes it."""
    if scored is None:
        scored = classifier.scored_paths([p for p, _ in samples])
    for path, outcome in scored:
        if progress is not None:
            progress(1)
        if isinstance(outcome, Exception):
            failed.append({"path": path, "error": str(outcome)})
        else:
            yield path, outcome


def _match_classes(classifier: ImageClassifier, folders: list[str]) -> dict[str, int]:
    """Model output index of each class folder, by class id (WordNet id) or by name."""
    labels = classifier.labels
    unknown = [f for f in folders if labels.index_of(f, ignore_case=True) is None]
    if unknown:
        raise EvaluationError(
            f"class(es) {unknown[:5]} of the data are not classes of {classifier.name} "
            f"(its classes include {list(classifier.labels.names[:3])}...)"
        )
    return {folder: labels.index_of(folder, ignore_case=True) for folder in folders}


def write_report(
    evaluation: Evaluation | MultiLabelEvaluation, metrics: dict[str, Any], out: str | os.PathLike
) -> None:
    """metrics.json, predictions.csv and the plots into `out`, each written atomically
    (WriteError when one cannot be)."""
    from imgcls.reports import plots

    out = make_dir(out)
    write_json(out / "metrics.json", metrics)
    if isinstance(evaluation, MultiLabelEvaluation):
        _write_multilabel_report(evaluation, out)
        return
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
    if evaluation.conformal is not None and evaluation.probabilities:
        _plot_conformal(
            evaluation.conformal,
            np.stack(evaluation.probabilities),
            np.asarray(evaluation.true_outputs),
            out / "conformal.png",
        )


def _plot_conformal(
    conformal: Conformal, probabilities: np.ndarray, true: np.ndarray, path: Path
) -> None:
    """Empirical coverage and mean set size against the level asked for."""
    from imgcls.reports import plots

    levels = np.round(np.arange(0.5, 0.995, 0.01), 2)
    rows = np.arange(len(true))
    coverage, sizes = [], []
    for level in levels:
        sets = conformal.sets(probabilities, float(level))
        coverage.append(float(sets[rows, true].mean()))
        sizes.append(float(sets.sum(axis=1).mean()))
    plots.conformal_levels(levels, np.array(coverage), np.array(sizes), path)


def _write_multilabel_report(evaluation: MultiLabelEvaluation, out: Path) -> None:
    """predictions.csv (classes joined by "; "), pr_curves.png and the galleries of the
    most confident false positives and false negatives."""
    from imgcls.reports import plots

    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["path", "true", "predicted", "scores"])
    names = evaluation.classes
    for path, target, predicted, scores in zip(
        evaluation.paths,
        evaluation.targets,
        evaluation.predicted,
        evaluation.probabilities,
        strict=True,
    ):
        ranked = np.argsort(-scores, kind="stable")
        writer.writerow(
            [
                path,
                "; ".join(names[c] for c in np.flatnonzero(target)),
                "; ".join(names[c] for c in ranked if predicted[c]),
                "; ".join(f"{names[c]} {scores[c]:.4f}" for c in ranked),
            ]
        )
    write_text(out / "predictions.csv", rows.getvalue())
    plots.pr_curves(
        evaluation.targets,
        evaluation.probabilities,
        names,
        evaluation.thresholds,
        out / "pr_curves.png",
    )
    for false_positives, name, title in (
        (True, "false_positives.png", "Most confident false positives"),
        (
            False,
            "false_negatives.png",
            "Most confident false negatives (score of the missed class)",
        ),
    ):
        plots.mistakes(evaluation.mistakes(false_positives), out / name, title=title)


def _most_confident_mistakes(
    evaluation: Evaluation, limit: int = 16
) -> list[tuple[str, str, str, float]]:
    wrong = [image for image in evaluation.images if image.true != image.predicted]
    wrong.sort(key=lambda image: image.score, reverse=True)
    return [
        (image.path, evaluation.classes[image.true], image.predicted_label, image.score)
        for image in wrong[:limit]
    ]
