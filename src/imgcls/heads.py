"""Classical classifiers on frozen CNN features: softmax regression, SVM, MLP, k-NN.

`fit_head` fits a scikit-learn pipeline (standardisation, then the classifier) and picks its
main hyper-parameter on the validation split from a small grid; the chosen model is then
refitted on train + validation. Heads are stored as ONNX (skl2onnx) and run with ONNX
Runtime, so loading a run never unpickles anything.
"""

from __future__ import annotations

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
    "save_head_onnx",
]

# The grid searched on the validation split for each kind: (parameter, values).
_GRIDS: dict[str, tuple[str, list[Any]]] = {
    "logreg": ("C", [0.01, 0.1, 1.0, 10.0]),  # inverse L2 strength
    "svm": ("C", [0.1, 1.0, 10.0]),  # RBF kernel, Platt-scaled probabilities
    "mlp": ("alpha", [1e-4, 1e-2, 1.0]),  # L2 penalty of a 512-unit hidden layer
    "knn": ("n_neighbors", [1, 5, 15]),  # distance-weighted votes, cosine metric
}
HEAD_KINDS = tuple(_GRIDS)

# A head never rules a class out: each class keeps at least 1% / C of the probability (so
# its top probability stays under ~99%). k-NN votes and SVMs give exact zeros, whose
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


@dataclass
class FittedHead:
    kind: str
    pipeline: Any  # sklearn Pipeline
    params: dict[str, Any]
    val_accuracy: float | None
    search: list[dict[str, Any]] = field(default_factory=list)  # every grid point tried
    # Validation probabilities of the chosen grid point, fitted on train only: held-out
    # predictions for calibration (the final pipeline has seen the validation split).
    val_proba: np.ndarray | None = None


def _make(kind: str, value: Any, seed: int, train_y: np.ndarray):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler
    from sklearn.svm import SVC

    if kind == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(C=value, max_iter=2000))
    if kind == "svm":
        # Probabilities by Platt scaling, fitted on held-out folds of the training set.
        folds = max(2, min(3, int(np.bincount(train_y).min())))
        svc = SVC(C=value, random_state=seed)
        return make_pipeline(
            StandardScaler(), CalibratedClassifierCV(svc, method="sigmoid", cv=folds)
        )
    if kind == "mlp":
        return make_pipeline(
            StandardScaler(),
            MLPClassifier(
                (512,),
                alpha=value,
                max_iter=500,
                early_stopping=len(train_y) >= 50,
                random_state=seed,
            ),
        )
    # k-NN on L2-normalised features: Euclidean distance then ranks like cosine distance.
    return make_pipeline(
        Normalizer(), KNeighborsClassifier(n_neighbors=min(value, len(train_y)), weights="distance")
    )


def fit_head(
    kind: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray | None = None,
    val_y: np.ndarray | None = None,
    seed: int = 0,
) -> FittedHead:
    """Fit a `kind` head; with validation data, choose its hyper-parameter there."""
    if kind not in _GRIDS:
        raise ValueError(f"classifier must be one of {', '.join(HEAD_KINDS)}; got {kind!r}")
    name, values = _GRIDS[kind]
    search: list[dict[str, Any]] = []
    best_value, best_accuracy, best_proba = values[len(values) // 2], None, None
    if val_x is not None and val_y is not None and len(val_y):
        for value in values:
            pipeline = _make(kind, value, seed, train_y).fit(train_x, train_y)
            proba = pipeline.predict_proba(val_x)
            accuracy = float((proba.argmax(axis=1) == val_y).mean())
            search.append({name: value, "val_accuracy": accuracy})
            if best_accuracy is None or accuracy > best_accuracy:
                best_value, best_accuracy, best_proba = value, accuracy, proba
        train_x = np.concatenate([train_x, val_x])
        train_y = np.concatenate([train_y, val_y])
    pipeline = _make(kind, best_value, seed, train_y).fit(train_x, train_y)
    return FittedHead(kind, pipeline, {name: best_value}, best_accuracy, search, best_proba)


def save_head_onnx(head: FittedHead, num_features: int, path: str | os.PathLike) -> None:
    """Write the fitted pipeline as ONNX: float features in, class probabilities out."""
    from skl2onnx import to_onnx

    from imgcls.checkpoint import atomic_write

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
    """A saved head, run by ONNX Runtime: features (N, D) → probabilities (N, classes)."""

    def __init__(self, path: str | os.PathLike) -> None:
        import onnxruntime as ort

        from imgcls.checkpoint import WeightsError

        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            reason = str(exc).splitlines()[0][:200]
            raise WeightsError(f"{path}: not an ONNX classifier head ({reason})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = next(
            o.name for o in self.session.get_outputs() if "prob" in o.name.lower()
        )

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        (probabilities,) = self.session.run(
            [self.output_name], {self.input_name: features.astype(np.float32)}
        )
        return np.asarray(probabilities, dtype=np.float64)
