"""Trustworthy predictions end to end: runs that say "unknown" to a class they never saw,
calibrated scores in every path (API, CLI, ONNX, server), and evaluate's calibration and
operating points.

Data: crops of the bundled sample photos (conftest.write_photo_crops). Heads learn cat vs
espresso on EfficientNet-Lite0 features; rocket crops are the unseen class.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import write_photo_crops
from serve_utils import metric, thread_server
from typer.testing import CliRunner

from imgcls import ImageClassifier
from imgcls.cli import app
from imgcls.data.images import list_images
from imgcls.errors import ConfigError
from imgcls.models.run_dir import read_run_config
from imgcls.training.config import TrainConfig
from imgcls.training.loop import train

SCORES = ("knn", "max_prob")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path | list[Path]]:
    """data/{cat,espresso} to train on, rocket/ never seen, and fresh in-distribution crops."""
    root = tmp_path_factory.mktemp("trust")
    write_photo_crops(root / "all", per_class=16, seed=1)
    write_photo_crops(root / "fresh", per_class=8, seed=2)
    for name in ("cat", "espresso"):
        shutil.move(root / "all" / name, root / "data" / name)
        shutil.rmtree(root / "fresh" / "rocket", ignore_errors=True)
    return {
        "data": root / "data",
        "unseen": list_images(root / "all" / "rocket"),
        "fresh_dir": root / "fresh",
        "fresh": list_images(root / "fresh"),
    }


@pytest.fixture(scope="module")
def runs(photos, tmp_path_factory) -> dict[str, Path]:
    """A logreg head run per rejection score."""
    out = tmp_path_factory.mktemp("runs")
    for score in SCORES:
        config = TrainConfig(
            data=str(photos["data"]),
            out=str(out / score),
            classifier="logreg",
            reject_score=score,
            val_split=0.25,
            img_size=96,  # the crops' own size: a fifth of the compute of 224
            progress=False,
        )
        train(config)
    return {score: out / score for score in SCORES}


def unknown_rate(classifier: ImageClassifier, paths: list[Path], **kwargs) -> float:
    answers = [preds for _, preds in classifier.classify_paths(paths, **kwargs)]
    assert all(len({p.unknown for p in preds}) == 1 for preds in answers)  # same per image
    return sum(preds[0].unknown for preds in answers) / len(answers)


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_an_unseen_class_comes_back_unknown_and_known_classes_do_not(runs, photos):
    rates = {}
    for score, run in runs.items():
        classifier = ImageClassifier(str(run))
        rates[score] = (
            unknown_rate(classifier, photos["unseen"]),
            unknown_rate(classifier, photos["fresh"]),
        )
        print(f"{score}: unknown on unseen class {rates[score][0]:.0%}, "
              f"on known classes {rates[score][1]:.0%}")  # fmt: skip
    unseen, known = rates["knn"]  # the default score
    assert unseen >= 0.75 and known <= 0.25, rates
    # why k-NN is the default: it catches the unseen class at least as often
    assert rates["knn"][0] >= rates["max_prob"][0], rates


def test_a_run_stores_its_temperature_and_rule(runs):
    config = read_run_config(runs["knn"])
    assert config["temperature"] > 0 and config["calibration"]["val_images"] == 8
    rule = config["reject"]
    assert rule["score"] == "knn" and rule["target_coverage"] == 0.95
    assert rule["val_coverage"] >= 0.95 and (runs["knn"] / rule["reference"]).is_file()
    assert read_run_config(runs["max_prob"])["reject"]["score"] == "max_prob"


def test_min_score_overrides_the_run_rule(runs, photos):
    classifier = ImageClassifier(str(runs["knn"]))
    assert unknown_rate(classifier, photos["unseen"], min_score=0.0) == 0.0
    for _, preds in classifier.classify_paths(photos["fresh"] + photos["unseen"], min_score=0.99):
        assert preds[0].unknown == (preds[0].score < 0.99)
    with pytest.raises(ValueError, match="min_score"):
        classifier.classify_image(photos["fresh"][0], min_score=1.5)


def test_registry_models_say_unknown_only_when_min_score_is_given(classifier, samples):
    assert not classifier.classify_image(samples / "cat.jpg")[0].unknown
    top = classifier.classify_image(samples / "cat.jpg", min_score=0.999)[0]
    assert top.unknown and top.score < 0.999


def test_cli_predict_marks_unknown_and_takes_min_score(runs, photos):
    rocket, cat = str(photos["unseen"][0]), str(photos["fresh"][0])

    def predict(*extra: str) -> list[dict]:
        return json.loads(
            cli("predict", rocket, cat, "--model", str(runs["knn"]), "--json", *extra)
        )

    default = predict()
    assert [r["predictions"][0]["unknown"] for r in default] == [True, False]
    assert [r["predictions"][0]["unknown"] for r in predict("--min-score", "0")] == [False] * 2


def test_evaluate_reports_calibration_operating_points_and_the_rule(runs, photos, tmp_path):
    run, data = str(runs["max_prob"]), str(photos["fresh_dir"])
    report = json.loads(cli("evaluate", run, data, "--json", "--out", str(tmp_path)))
    assert report["temperature"] == pytest.approx(read_run_config(runs["max_prob"])["temperature"])
    assert 0 <= report["ece"] <= 1 and 0 <= report["ece_uncalibrated"] <= 1
    points = report["operating_points"]
    assert points[0] == {"threshold": 0.0, "coverage": 1.0, "accuracy": report["accuracy"],
                         "answered": report["num_images"]}  # fmt: skip
    assert [p["coverage"] for p in points] == sorted((p["coverage"] for p in points), reverse=True)
    rule = report["reject"]
    assert rule["score"] == "max_prob" and 0 <= rule["unknown_rate"] <= 0.5
    for name in ("reliability.png", "coverage_accuracy.png", "metrics.json"):
        assert (tmp_path / name).stat().st_size > 1000


def test_server_marks_unknown_counts_it_and_takes_min_score(runs, photos):
    rocket = photos["unseen"][0].read_bytes()
    cat = photos["fresh"][0].read_bytes()
    with (
        thread_server(models=(str(runs["knn"]),)) as url,
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        files = [("file", ("rocket.jpg", rocket)), ("file", ("cat.jpg", cat))]
        body = client.post("/v1/classify", files=files).json()
        assert [r["predictions"][0]["unknown"] for r in body["results"]] == [True, False]
        body = client.post("/v1/classify", params={"min_score": 0}, files=files).json()
        assert [r["predictions"][0]["unknown"] for r in body["results"]] == [False, False]
        bad = client.post("/v1/classify", params={"min_score": 2}, files=files)
        assert bad.status_code == 400 or bad.status_code == 422
        text = client.get("/metrics").text
        assert metric(text, "imgcls_unknown_predictions_total", model=str(runs["knn"])) == 1


def test_target_options_are_checked(photos, tmp_path):
    base = dict(data=str(photos["data"]), out=str(tmp_path / "x"), classifier="logreg")
    with pytest.raises(ConfigError, match="choose one"):
        train(TrainConfig(**base, target_precision=0.9, target_coverage=0.9))
    with pytest.raises(ConfigError, match="target_coverage"):
        train(TrainConfig(**base, target_coverage=1.5))
    with pytest.raises(ConfigError, match="reject_score"):
        train(TrainConfig(**base, reject_score="entropy"))


def test_a_network_run_is_calibrated_and_its_onnx_export_scores_the_same(photos, tmp_path):
    run = tmp_path / "cnn"
    result = train(
        TrainConfig(
            data=str(photos["data"]),
            out=str(run),
            model="simple_cnn",
            pretrained=False,
            epochs=2,
            img_size=32,
            batch_size=8,
            workers=0,
            reject_score="max_prob",
            target_precision=0.9,
            val_split=0.25,
            progress=False,
        )  # fmt: skip
    )
    config = read_run_config(run)
    assert result.calibration["temperature"] == config["temperature"]
    assert config["reject"]["target_precision"] == 0.9
    cli("export", str(run), "--out", str(tmp_path / "cnn.onnx"))
    torch_clf, onnx_clf = ImageClassifier(str(run)), ImageClassifier(str(tmp_path / "cnn.onnx"))
    assert onnx_clf.temperature == pytest.approx(config["temperature"])
    assert onnx_clf.rejection.threshold == pytest.approx(config["reject"]["threshold"])
    batch = np.stack([torch_clf.prepare(p) for p in photos["fresh"]])
    assert np.allclose(torch_clf.predict_proba(batch), onnx_clf.predict_proba(batch), atol=1e-4)
    assert [p[0].unknown for p in torch_clf.predict_batch(batch)] == [
        p[0].unknown for p in onnx_clf.predict_batch(batch)
    ]
