"""Classical heads: fitted with a validation search, saved as ONNX, identical when run."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli, write_photo_crops

from imgcls import ImageClassifier
from imgcls.errors import WeightsError
from imgcls.evaluate import evaluate, find_labelled_images
from imgcls.inference.heads import OnnxHead
from imgcls.models.run_dir import read_run_config
from imgcls.training.config import TrainConfig
from imgcls.training.head_fit import HEAD_KINDS, FittedHead, fit_head, save_head_onnx
from imgcls.training.loop import train
from imgcls.training.svm import TemperatureScaledSVC


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
def photo_features(classifier, tmp_path_factory):
    """EfficientNet-Lite0 features of photo crops, extracted once: 40 per class to fit on
    and 20 other crops per class (another seed) held out. Labels 0, 1, 2: cat, espresso,
    rocket."""
    root = tmp_path_factory.mktemp("photo-features")

    def features(folder: Path) -> tuple[np.ndarray, np.ndarray]:
        samples = find_labelled_images(folder)
        vectors = [f for _, f in classifier.features_paths([path for path, _ in samples])]
        names = sorted({name for _, name in samples})
        return np.stack(vectors), np.array([names.index(name) for _, name in samples])

    fit = features(write_photo_crops(root / "fit", per_class=40, seed=1))
    held_out = features(write_photo_crops(root / "held_out", per_class=20, seed=2))
    return fit, held_out


@pytest.fixture(scope="module")
def photo_heads(photo_features) -> dict[str, object]:
    """Every kind of head fitted on the photo features, every 4th image for validation."""
    (x, y), _ = photo_features
    val = np.arange(len(y)) % 4 == 0
    return {kind: fit_head(kind, x[~val], y[~val], x[val], y[val], seed=0) for kind in HEAD_KINDS}


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_head_classifies_held_out_photos(photo_heads, photo_features, kind):
    _, (x, y) = photo_features
    pipeline = photo_heads[kind].pipeline
    assert (pipeline.predict(x) == y).mean() >= 0.97
    assert (pipeline.predict_proba(x).argmax(axis=1) == y).mean() >= 0.97


def test_svm_search_tries_both_kernels(photo_heads):
    head = photo_heads["svm"]
    assert {point["kernel"] for point in head.search} == {"linear", "rbf"}
    assert all({"kernel", "C", "val_accuracy"} == set(point) for point in head.search)
    assert head.params in [{"kernel": p["kernel"], "C": p["C"]} for p in head.search]


def _hard_svm_problem(photo_features, classes: tuple[int, ...]):
    """The photo features of `classes` (relabelled 0, 1, ...) with every 10th training label
    wrong, so that held-out folds have errors to fit a temperature on, and blends of one
    image per class: ambiguous inputs, where one-vs-one votes tie."""
    (x, y), (test_x, test_y) = photo_features
    keep, test_keep = np.isin(y, classes), np.isin(test_y, classes)
    x, y = x[keep], np.searchsorted(classes, y[keep])
    noisy = y.copy()
    noisy[::10] = (noisy[::10] + 1) % len(classes)
    one_per_class = np.repeat(np.stack([x[y == c] for c in range(len(classes))], axis=1), 3, 0)
    weights = np.random.default_rng(0).dirichlet(np.ones(len(classes)), len(one_per_class))
    blends = np.einsum("nc,ncd->nd", weights, one_per_class)
    inputs = np.concatenate([x, test_x[test_keep], blends]).astype(np.float32)
    return x, noisy, inputs


CLASS_SETS = pytest.mark.parametrize("classes", [(0, 1, 2), (0, 2)], ids=["3-class", "binary"])


@CLASS_SETS
def test_svm_head_predicts_the_argmax_of_its_decision_function(photo_features, classes):
    x, y, inputs = _hard_svm_problem(photo_features, classes)
    val = np.arange(len(y)) % 4 == 0
    pipeline = fit_head("svm", x[~val], y[~val], x[val], y[val], seed=0).pipeline
    decision = pipeline.decision_function(inputs)
    decided = (decision > 0).astype(int) if len(classes) == 2 else decision.argmax(axis=1)
    assert np.array_equal(pipeline.predict(inputs), decided)
    assert np.array_equal(pipeline.predict_proba(inputs).argmax(axis=1), decided)


@CLASS_SETS
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_svm_head_onnx_gives_the_pipeline_probabilities(tmp_path, photo_features, classes, kernel):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, inputs = _hard_svm_problem(photo_features, classes)
    svm = TemperatureScaledSVC(kernel=kernel, random_state=0)
    pipeline = make_pipeline(StandardScaler(), svm).fit(x, y)
    assert svm.temperature_ != 1.0  # the noisy labels leave held-out errors to fit T on
    save_head_onnx(FittedHead("svm", pipeline, {}, None), x.shape[1], tmp_path / "svm.onnx")
    probabilities = OnnxHead(tmp_path / "svm.onnx").predict_proba(inputs)
    assert np.allclose(probabilities, pipeline.predict_proba(inputs), atol=1e-5)


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
    result = run_cli("predict", str(samples / "espresso.jpg"), "--model", str(out), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["predictions"][0]["label"] == "espresso"


@pytest.mark.parametrize("kind", ["logreg", "svm"])
def test_head_run_exports_as_one_onnx_graph(head_runs, crops, tmp_path, kind):
    out, _ = head_runs[kind]
    exported = tmp_path / f"{kind}.onnx"
    result = run_cli("export", str(out), "--out", str(exported), "--images", str(crops))
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
