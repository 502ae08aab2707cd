"""The svm head's estimator: scikit-learn's `SVC` with probabilities that never overrule it.

    probabilities = softmax(decision_function(x) / T)

with one temperature T > 0 fitted by log-loss on cross-validated (held-out fold) decision
values of the training set. A monotone map of the decision values keeps their argmax, so
the most probable class is always the SVM's own decision; Platt scaling per class (what
`CalibratedClassifierCV` does) could reorder them. Binary problems have one decision value
d, used as the two columns (-d, d), which is what skl2onnx's SVC converter writes.

It lives apart from `heads.py` because it subclasses scikit-learn's estimators, and
`heads.py` is imported on the inference path, which has no scikit-learn.
"""

from __future__ import annotations

import numpy as np
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.svm import SVC

from imgcls.trust.calibration import fit_temperature

__all__ = ["TemperatureScaledSVC", "register_onnx_converter"]


def _logits(decision: np.ndarray) -> np.ndarray:
    """(N, classes) scores whose argmax is the SVC's decision; binary: (-d, d)."""
    return np.stack([-decision, decision], axis=1) if decision.ndim == 1 else decision


class TemperatureScaledSVC(ClassifierMixin, BaseEstimator):
    """SVC(kernel, C), its decision values turned into probabilities by one temperature
    fitted on `folds` held-out folds of the training set (shuffled with `random_state`)."""

    def __init__(
        self, kernel: str = "rbf", C: float = 1.0, folds: int = 3, random_state: int | None = None
    ):
        self.kernel = kernel
        self.C = C
        self.folds = folds
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> TemperatureScaledSVC:
        self.svc_ = SVC(kernel=self.kernel, C=self.C).fit(X, y)
        self.classes_ = self.svc_.classes_
        labels = np.searchsorted(self.classes_, y)
        if np.bincount(labels).min() < self.folds:
            self.temperature_ = 1.0  # a class too small to hold out: no evidence to scale
            return self
        folds = StratifiedKFold(self.folds, shuffle=True, random_state=self.random_state)
        held_out = cross_val_predict(
            SVC(kernel=self.kernel, C=self.C), X, y, cv=folds, method="decision_function"
        )
        self.temperature_ = fit_temperature(_logits(held_out), labels)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.svc_.decision_function(X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return softmax(_logits(self.decision_function(X)) / self.temperature_, axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        # The argmax of the decision values, not SVC.predict: libsvm breaks one-vs-one vote
        # ties by class order, the decision values by summed confidences.
        return self.classes_[_logits(self.decision_function(X)).argmax(axis=1)]


def _convert(scope, operator, container) -> None:
    """ONNX: skl2onnx's own SVC graph for the decision values (`raw_scores`), divided by
    T, then Softmax; the label is the argmax of the same scores."""
    from skl2onnx.algebra.onnx_operator import OnnxSubEstimator
    from skl2onnx.algebra.onnx_ops import OnnxArgMax, OnnxDiv, OnnxGather, OnnxSoftmax

    model, opset = operator.raw_operator, container.target_opset
    svc = OnnxSubEstimator(
        model.svc_, operator.inputs[0], op_version=opset, options={"raw_scores": True}
    )
    temperature = np.array([model.temperature_], np.float32)
    logits = OnnxDiv(svc[1], temperature, op_version=opset)
    probabilities = OnnxSoftmax(logits, axis=1, op_version=opset, output_names=operator.outputs[1:])
    index = OnnxArgMax(logits, axis=1, keepdims=0, op_version=opset)
    label = OnnxGather(
        model.classes_.astype(np.int64), index, op_version=opset, output_names=operator.outputs[:1]
    )
    probabilities.add_to(scope, container)
    label.add_to(scope, container)


def register_onnx_converter() -> None:
    """Teach skl2onnx to convert `TemperatureScaledSVC` (idempotent)."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes

    update_registered_converter(
        TemperatureScaledSVC,
        "ImgclsTemperatureScaledSVC",
        calculate_linear_classifier_output_shapes,
        _convert,
        options={"zipmap": [True, False, "columns"], "nocl": [True, False]},
    )
