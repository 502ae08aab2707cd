"""Classical classifiers on frozen CNN features: softmax regression, SVM, MLP, k-NN.

`fit_head` fits a scikit-learn pipeline (standardisation, then the classifier) and picks its
hyper-parameters on the validation split from a small grid; the chosen model is then
refitted on train + validation. With multi-label targets ((N, C) 0/1) the classifier is
one-vs-rest (scikit-learn's `OneVsRestClassifier`: one yes/no classifier per class) and the
grid is searched for the best validation mAP. Heads are stored as ONNX (skl2onnx) and run
with ONNX Runtime, so loading a run never unpickles anything.
"""

from __future__ import annotations

import itertools
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "HEAD_KINDS",
    "FittedHead",
    "OnnxHead",
    "fit_head",
    "head_floor",
    "head_log_probabilities",
    "head_logits",
    "save_head_onnx",
]


def _grid(**axes: list[Any]) -> list[dict[str, Any]]:
    """Every combination of the named values, as keyword arguments, first axis slowest."""
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


# The grid searched on the validation split for each kind, in order: ties go to the first
# point, and without validation data the middle one is used.
_GRIDS: dict[str, list[dict[str, Any]]] = {
    "logreg": _grid(C=[0.01, 0.1, 1.0, 10.0]),  # inverse L2 strength
    "svm": [  # SVC; linear changes little from C = 0.1 up, RBF needs C >= 1 (docs/train.md)
        *_grid(kernel=["linear"], C=[0.01, 0.1, 1.0]),
        *_grid(kernel=["rbf"], C=[1.0, 10.0, 100.0]),
    ],
    "mlp": _grid(alpha=[1e-4, 1e-2, 1.0]),  # L2 penalty of a 512-unit hidden layer
    "knn": _grid(n_neighbors=[1, 5, 15]),  # distance-weighted votes, cosine metric
}
HEAD_KINDS = tuple(_GRIDS)

# A head never rules a class out: each class keeps at least 1% / C of the probability (so
# its top probability stays under ~99%). k-NN votes give exact zeros, whose
# logarithm made the temperature fit chase a few confidently wrong validation images
# (digits, k-NN head: T = 13.5 and test ECE 0.155 -> 0.396; with the floor T = 0.73 and
# 0.160 -> 0.084, benchmarks/trust.py --only heads).
_FLOOR_MASS = 0.01


def head_floor(num_classes: int) -> float:
    """The least probability a head gives any of `num_classes` classes."""
    return _FLOOR_MASS / num_classes


def head_log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """A head's "logits": its floored log-probabilities, so that softmax gives the
    probabilities back and temperature scaling has finite numbers to scale."""
    floor = head_floor(probabilities.shape[1])
    return np.log(np.maximum(probabilities, floor)).astype(np.float32)


def head_logits(probabilities: np.ndarray, multi_label: bool = False) -> np.ndarray:
    """A head's "logits" for the activation its run applies: floored log-probabilities
    (softmax), or for a multi-label head the log-odds of its per-class probabilities, kept
    within the same floor of 0 and 1 (sigmoid gives them back)."""
    if not multi_label:
        return head_log_probabilities(probabilities)
    floor = head_floor(probabilities.shape[1])
    clipped = np.clip(probabilities, floor, 1 - floor)
    return (np.log(clipped) - np.log1p(-clipped)).astype(np.float32)


@dataclass
class FittedHead:
    kind: str
    pipeline: Any  # sklearn Pipeline
    params: dict[str, Any]
    val_accuracy: float | None  # multi-label: per-label accuracy at 0.5
    search: list[dict[str, Any]] = field(default_factory=list)  # every grid point tried
    # Validation probabilities of the chosen grid point, fitted on train only: held-out
    # predictions for calibration (the final pipeline has seen the validation split).
    val_proba: np.ndarray | None = None
    val_map: float | None = None  # multi-label: the mean average precision that chose it


def _make(kind: str, params: dict[str, Any], seed: int, train_y: np.ndarray):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    scaler = StandardScaler()
    if kind == "logreg":
        classifier = LogisticRegression(**params, max_iter=2000)
    elif kind == "svm":
        from imgcls.svm import TemperatureScaledSVC

        # Probabilities by one temperature, fitted on held-out folds of the training set.
        folds = max(2, min(3, _smallest_class(train_y)))
        classifier = TemperatureScaledSVC(**params, folds=folds, random_state=seed)
    elif kind == "mlp":
        # No early stopping: its own 10% hold-out stopped the fit short on small sets
        # (textures: test 0.958 -> 1.000, digits 0.861 -> 0.869); `alpha` is chosen on
        # the validation split instead.
        classifier = MLPClassifier((512,), **params, max_iter=500, random_state=seed)
    else:
        # k-NN on L2-normalised features: Euclidean distance then ranks like cosine distance.
        scaler = Normalizer()
        neighbours = min(params["n_neighbors"], len(train_y))
        classifier = KNeighborsClassifier(n_neighbors=neighbours, weights="distance")
    if train_y.ndim == 2:  # multi-label: a yes/no classifier per class, all of one kind
        classifier = OneVsRestClassifier(classifier)
    return make_pipeline(scaler, classifier)


def _smallest_class(train_y: np.ndarray) -> int:
    """Images of the rarest class; multi-label: the rarest side of any class's yes/no."""
    if train_y.ndim == 2:
        positives = train_y.sum(axis=0)
        return int(min(positives.min(), (len(train_y) - positives).min()))
    return int(np.bincount(train_y).min())


def _validation_score(val_y: np.ndarray, proba: np.ndarray) -> float:
    """What picks a grid point: accuracy, or for multi-label targets the mAP."""
    if val_y.ndim == 2:
        from imgcls.multilabel import mean_average_precision

        return mean_average_precision(val_y, proba) or 0.0
    return float((proba.argmax(axis=1) == val_y).mean())


def fit_head(
    kind: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray | None = None,
    val_y: np.ndarray | None = None,
    seed: int = 0,
) -> FittedHead:
    """Fit a `kind` head; with validation data, choose its hyper-parameters there.
    `train_y`, `val_y`: class indices, or (N, C) 0/1 targets for a multi-label head."""
    if kind not in _GRIDS:
        raise ValueError(f"classifier must be one of {', '.join(HEAD_KINDS)}; got {kind!r}")
    grid = _GRIDS[kind]
    multi_label = train_y.ndim == 2
    score_name = "val_map" if multi_label else "val_accuracy"
    search: list[dict[str, Any]] = []
    best_params, best_score, best_proba = grid[len(grid) // 2], None, None
    if val_x is not None and val_y is not None and len(val_y):
        for params in grid:
            pipeline = _make(kind, params, seed, train_y).fit(train_x, train_y)
            proba = pipeline.predict_proba(val_x)
            score = _validation_score(val_y, proba)
            search.append({**params, score_name: score})
            if best_score is None or score > best_score:
                best_params, best_score, best_proba = params, score, proba
        train_x = np.concatenate([train_x, val_x])
        train_y = np.concatenate([train_y, val_y])
    pipeline = _make(kind, best_params, seed, train_y).fit(train_x, train_y)
    if not multi_label:
        return FittedHead(kind, pipeline, dict(best_params), best_score, search, best_proba)
    from imgcls.multilabel import label_accuracy

    accuracy = None if best_proba is None else label_accuracy(val_y, best_proba)
    return FittedHead(
        kind, pipeline, dict(best_params), accuracy, search, best_proba, val_map=best_score
    )


def save_head_onnx(head: FittedHead, num_features: int, path: str | os.PathLike) -> None:
    """Write the fitted pipeline as ONNX: float features in, class probabilities out."""
    from skl2onnx import to_onnx

    from imgcls.checkpoint import atomic_write

    if head.kind == "svm":
        from imgcls.svm import register_onnx_converter

        register_onnx_converter()
    with warnings.catch_warnings():
        # skl2onnx reads SVC attributes that scikit-learn 1.9 deprecates; nothing to act on.
        warnings.filterwarnings("ignore", message="Attribute `prob[AB]_` was deprecated")
        onnx_model = to_onnx(
            head.pipeline,
            np.zeros((1, num_features), np.float32),
            options={id(head.pipeline.steps[-1][1]): {"zipmap": False}},
            target_opset=17,
        )
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(onnx_model.SerializeToString()))


class OnnxHead:
    """A saved head, run by ONNX Runtime: features (N, D) → probabilities (N, classes).
    `path` is the head's file, or its bytes."""

    def __init__(self, path: str | os.PathLike | bytes) -> None:
        import onnxruntime as ort

        from imgcls.checkpoint import WeightsError

        self._model = path
        self.path = "<bytes>" if isinstance(path, bytes) else Path(path)
        source = path if isinstance(path, bytes) else str(path)
        try:
            self.session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            reason = str(exc).splitlines()[0][:200]
            raise WeightsError(f"{path}: not an ONNX classifier head ({reason})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = next(
            o.name for o in self.session.get_outputs() if "prob" in o.name.lower()
        )

    def model_bytes(self) -> bytes:
        """The head file's content (what `imgcls.classifier.ModelBundle` carries)."""
        return self._model if isinstance(self._model, bytes) else Path(self._model).read_bytes()

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        (probabilities,) = self.session.run(
            [self.output_name], {self.input_name: features.astype(np.float32)}
        )
        return np.asarray(probabilities, dtype=np.float64)
