"""Classical heads at inference: a fitted head (stored as ONNX by `imgcls.training.head_fit`)
run by ONNX Runtime on frozen CNN features, and the logits the rest of imgcls reads from its
probabilities. Loading a run never unpickles anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from imgcls.errors import WeightsError

__all__ = [
    "OnnxHead",
    "head_floor",
    "head_log_probabilities",
    "head_logits",
]


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


class OnnxHead:
    """A saved head, run by ONNX Runtime: features (N, D) → probabilities (N, classes).
    `path` is the head's file, or its bytes."""

    def __init__(self, path: str | os.PathLike | bytes) -> None:
        import onnxruntime as ort

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
        """The head file's content (what `imgcls.inference.classifier.ModelBundle` carries)."""
        return self._model if isinstance(self._model, bytes) else Path(self._model).read_bytes()

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        (probabilities,) = self.session.run(
            [self.output_name], {self.input_name: features.astype(np.float32)}
        )
        return np.asarray(probabilities, dtype=np.float64)
