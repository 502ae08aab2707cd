"""Fitting classical heads on frozen CNN features: softmax regression, SVM, MLP, k-NN.

`fit_head` fits a scikit-learn pipeline (standardisation, then the classifier) and picks its
hyper-parameters on the validation split from a small grid; the chosen model is then
refitted on train + validation. With multi-label targets ((N, C) 0/1) the classifier is
one-vs-rest (scikit-learn's `OneVsRestClassifier`: one yes/no classifier per class) and the
grid is searched for the best validation mAP. Heads are stored as ONNX (skl2onnx).
"""

from __future__ import annotations

import itertools
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.files import atomic_write
from imgcls.trust.multilabel import label_accuracy, mean_average_precision

__all__ = [
    "FittedHead",
    "HEAD_KINDS",
    "fit_head",
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
        from imgcls.training.svm import TemperatureScaledSVC  # deferred: scikit-learn

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

    accuracy = None if best_proba is None else label_accuracy(val_y, best_proba)
    return FittedHead(
        kind, pipeline, dict(best_params), accuracy, search, best_proba, val_map=best_score
    )


def save_head_onnx(head: FittedHead, num_features: int, path: str | os.PathLike) -> None:
    """Write the fitted pipeline as ONNX: float features in, class probabilities out."""
    from skl2onnx import to_onnx

    if head.kind == "svm":
        from imgcls.training.svm import register_onnx_converter  # deferred: skl2onnx

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
