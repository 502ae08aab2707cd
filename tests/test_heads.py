"""Classical heads: fitted with a validation search, saved as ONNX, identical when run."""

from __future__ import annotations

import numpy as np
import pytest

from imgcls.heads import HEAD_KINDS, OnnxHead, fit_head, save_head_onnx


@pytest.fixture(scope="module")
def blobs():
    """Three Gaussian classes in 32 dimensions, separable but not trivially."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 32)) * 2.0
    labels = np.repeat(np.arange(3), 60)
    features = (centers[labels] + rng.standard_normal((180, 32)) * 1.5).astype(np.float32)
    order = rng.permutation(180)
    return features[order], labels[order]


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_head_learns_and_onnx_matches_scikit_learn(tmp_path, blobs, kind):
    x, y = blobs
    head = fit_head(kind, x[:100], y[:100], x[100:130], y[100:130], seed=0)
    assert head.val_accuracy is not None and len(head.search) >= 3
    tried = [{k: v for k, v in point.items() if k != "val_accuracy"} for point in head.search]
    assert head.params in tried
    save_head_onnx(head, x.shape[1], tmp_path / "head.onnx")
    probabilities = OnnxHead(tmp_path / "head.onnx").predict_proba(x[130:])
    assert np.allclose(probabilities, head.pipeline.predict_proba(x[130:]), atol=1e-5)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities.argmax(axis=1) == y[130:]).mean() >= 0.8


def test_unknown_kind_is_refused(blobs):
    with pytest.raises(ValueError, match="logreg, svm, mlp, knn"):
        fit_head("forest", *blobs)
