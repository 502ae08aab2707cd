"""Classical heads: fitted with a validation search, saved as ONNX, identical when run."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_env, imgcls_command, write_photo_crops

from imgcls import ImageClassifier
from imgcls.checkpoint import WeightsError, read_run_config
from imgcls.evaluate import evaluate, find_labelled_images
from imgcls.heads import HEAD_KINDS, OnnxHead, fit_head, save_head_onnx
from imgcls.train import TrainConfig, train


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


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    return write_photo_crops(tmp_path_factory.mktemp("crops"), per_class=12)


@pytest.fixture(scope="module")
def head_runs(crops, tmp_path_factory) -> dict[str, tuple[Path, object]]:
    runs = {}
    for kind in HEAD_KINDS:
        out = tmp_path_factory.mktemp("runs") / kind
        result = train(
            TrainConfig(
                data=str(crops), out=str(out), classifier=kind, val_split=0.25, progress=False
            )  # fmt: skip
        )
        runs[kind] = (out, result)
    return runs


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_head_run_trains_predicts_and_evaluates(head_runs, crops, kind):
    out, result = head_runs[kind]
    assert result.best_val_accuracy >= 0.8
    config = read_run_config(out)
    assert config["classifier"] == kind and config["head"] == "head.onnx"
    assert {"best.safetensors", "head.onnx", "config.json", "metrics.csv"} <= {
        p.name for p in out.iterdir()
    }
    classifier = ImageClassifier(str(out))
    assert classifier.labels.names == ("cat", "espresso", "rocket")
    samples = find_labelled_images(crops)
    metrics = evaluate(classifier, samples).metrics()
    assert metrics["accuracy"] >= 0.9  # train + val images: the head has seen most of them
    predictions = classifier.classify_image(samples[0][0], top_k=3)
    assert sum(p.score for p in predictions) == pytest.approx(1.0, abs=1e-5)


def test_head_run_works_from_the_command_line(head_runs, samples):
    out, _ = head_runs["logreg"]
    result = subprocess.run(
        imgcls_command("predict", str(samples / "espresso.jpg"), "--model", str(out), "--json"),
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["predictions"][0]["label"] == "espresso"


@pytest.mark.parametrize("kind", ["logreg", "svm"])
def test_head_run_exports_as_one_onnx_graph(head_runs, crops, tmp_path, kind):
    out, _ = head_runs[kind]
    exported = tmp_path / f"{kind}.onnx"
    result = subprocess.run(
        imgcls_command("export", str(out), "--out", str(exported), "--images", str(crops)),
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(),
    )
    assert result.returncode == 0, result.stderr
    standalone, run = ImageClassifier(str(exported)), ImageClassifier(str(out))
    assert standalone.labels == run.labels and standalone.runtime.backend == "onnx"
    paths = [path for path, _ in find_labelled_images(crops)][:12]
    batch = np.stack([run.prepare(p) for p in paths])
    assert np.allclose(standalone.predict_proba(batch), run.predict_proba(batch), atol=1e-4)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_loading_a_head_run_never_unpickles(head_runs, tmp_path):
    source, _ = head_runs["knn"]
    run = tmp_path / "planted"
    shutil.copytree(source, run)
    marker = tmp_path / "pwned"
    with open(run / "head.onnx", "wb") as f:
        pickle.dump(_Exploit(marker), f)
    with pytest.raises(WeightsError, match="not an ONNX classifier head"):
        ImageClassifier(str(run))
    assert not marker.exists()
