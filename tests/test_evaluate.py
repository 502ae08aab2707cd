"""imgcls evaluate: metrics that agree with scikit-learn, report files, failures listed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import run_cli, write_photo_crops
from sklearn.metrics import classification_report
from typer.testing import CliRunner

from imgcls.cli import app
from imgcls.errors import EvaluationError
from imgcls.evaluate import OTHER, evaluate, expected_calibration_error, find_labelled_images

# Five ImageNet classes, named by WordNet id or by label, filled with the sample photos
# (and crops of them) so that some answers are right, some wrong, some outside the set.
LAYOUT = {
    "espresso": ["espresso.jpg", "espresso.jpg@crop"],
    "n02123159": ["cat.jpg", "cat.jpg@flip"],  # tiger cat
    "tabby": ["cat.jpg@crop"],
    "missile": ["rocket.jpg"],
    "n04008634": ["rocket.jpg@flip", "espresso.jpg@flip"],  # projectile
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, samples):
    root = tmp_path_factory.mktemp("evalset")
    for folder, items in LAYOUT.items():
        (root / "test" / folder).mkdir(parents=True)
        for n, item in enumerate(items):
            name, _, change = item.partition("@")
            image = cv2.imread(str(samples / name))
            if change == "crop":
                h, w = image.shape[:2]
                image = image[h // 8 : h - h // 8, w // 8 : w - w // 8]
            elif change == "flip":
                image = image[:, ::-1]
            cv2.imwrite(str(root / "test" / folder / f"{n}.jpg"), image)
    (root / "test" / "espresso" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    return root


@pytest.fixture(scope="module")
def evaluation(classifier, dataset):
    return evaluate(classifier, find_labelled_images(dataset, "test"))


def test_metrics_agree_with_scikit_learn(evaluation):
    metrics = evaluation.metrics()
    labels = sorted(set(evaluation.true))
    report = classification_report(
        evaluation.true, evaluation.predicted, labels=labels, output_dict=True, zero_division=0
    )
    for i in labels:
        ours = metrics["per_class"][evaluation.classes[i]]
        theirs = report[str(i)]
        for key in ("precision", "recall", "f1-score"):
            assert ours["f1" if key == "f1-score" else key] == pytest.approx(theirs[key])
        assert ours["support"] == theirs["support"]
    assert metrics["macro_f1"] == pytest.approx(report["macro avg"]["f1-score"])
    assert metrics["accuracy"] == pytest.approx(
        np.mean(np.asarray(evaluation.true) == np.asarray(evaluation.predicted))
    )


def test_confusion_matrix_rows_sum_to_supports(evaluation):
    metrics = evaluation.metrics()
    matrix = np.asarray(metrics["confusion_matrix"])
    assert matrix.shape == (len(metrics["classes"]),) * 2
    for i, name in enumerate(metrics["classes"]):
        support = metrics["per_class"][name]["support"] if name in metrics["per_class"] else 0
        assert matrix[i].sum() == support
    assert matrix.sum() == metrics["num_images"] == 8


def test_known_answers_and_top5(evaluation):
    metrics = evaluation.metrics()
    assert metrics["classes"][:5] == ["espresso", "missile", "tiger cat", "projectile", "tabby"]
    assert metrics["per_class"]["espresso"]["recall"] == 1.0  # both espresso photos
    assert metrics["per_class"]["missile"]["recall"] == 1.0
    assert 0 < metrics["accuracy"] < 1
    assert metrics["top5_accuracy"] >= metrics["accuracy"]
    assert 0 <= metrics["expected_calibration_error"] <= 1
    assert [f["path"].endswith("broken.jpg") for f in metrics["failed"]] == [True]


def test_predictions_outside_the_data_set_go_to_other(evaluation):
    classes = evaluation.classes
    answers = {  # "folder/file" → (data set class answered, the model's own top-1)
        Path(image.path).relative_to(Path(image.path).parents[1]).as_posix(): (
            classes[image.predicted],
            image.predicted_label,
        )
        for image in evaluation.images
    }
    # The flipped espresso photo in "projectile" is still an espresso: a data set class.
    assert answers["n04008634/1.jpg"] == ("espresso", "espresso")
    # The cat crop in "tabby" reads as an Egyptian cat, which the data set lacks: OTHER,
    # the last class. Every answer is the model's top-1 where the data set has that class.
    assert answers["tabby/0.jpg"] == (OTHER, "Egyptian cat") and classes[-1] == OTHER
    for answer, label in answers.values():
        assert answer == (label if label in classes[:-1] else OTHER)


def test_expected_calibration_error_by_hand():
    confidence = np.array([0.95, 0.95, 0.55, 0.55])
    correct = np.array([True, False, True, True])
    # Two bins: |0.5 - 0.95| * 0.5 + |1.0 - 0.55| * 0.5
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.45)


def test_unknown_class_folder_is_a_clear_error(classifier, tmp_path, samples):
    (tmp_path / "not_a_class").mkdir()
    shutil.copy(samples / "cat.jpg", tmp_path / "not_a_class")
    (tmp_path / "espresso").mkdir()
    shutil.copy(samples / "espresso.jpg", tmp_path / "espresso")
    with pytest.raises(EvaluationError, match="not_a_class"):
        evaluate(classifier, find_labelled_images(tmp_path))


def test_cli_writes_the_report_and_lists_failures(dataset, tmp_path):
    out = tmp_path / "report"
    result = run_cli("evaluate", "efficientnet_lite0", str(dataset), "--out", str(out), "--json")
    assert result.returncode == 1, result.stderr  # one unreadable file
    metrics = json.loads(result.stdout)
    for key in (
        "accuracy",
        "top5_accuracy",
        "classes",
        "confusion_matrix",
        "per_class",
        "macro_f1",
        "num_images",
        "failed",
    ):
        assert key in metrics
    assert json.loads((out / "metrics.json").read_text()) == metrics
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "path,true,predicted,score,unknown" and len(rows) == 1 + metrics["num_images"]
    for name in (
        "confusion_matrix.png",
        "mistakes.png",
        "reliability.png",
        "coverage_accuracy.png",
    ):
        image = cv2.imread(str(out / name))
        assert image is not None and min(image.shape[:2]) >= 300, name
        assert image.std() > 10, f"{name} is blank"


def test_split_picks_the_folder_and_top5_is_left_out_under_five_classes(tiny_run, tmp_path):
    write_photo_crops(tmp_path / "data" / "val", per_class=2, size=32, seed=1)
    write_photo_crops(tmp_path / "data" / "test", per_class=3, size=32, seed=2)
    num_images = {}
    for split in ("val", "test"):
        args = ["evaluate", str(tiny_run), str(tmp_path / "data"), "--split", split, "--json"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        metrics = json.loads(result.stdout)
        num_images[split] = metrics["num_images"]
        assert metrics["classes"] == ["cat", "espresso", "rocket"]
        assert "top5_accuracy" not in metrics  # 3 classes: every answer is in a top 5
    assert num_images == {"val": 6, "test": 9}


def test_cli_compares_several_models(dataset):
    result = run_cli("evaluate", "efficientnet_lite0", str(dataset), "--model", "EfficientNet")
    assert result.returncode == 1  # the broken file again
    assert "efficientnet_lite0" in result.stdout and "EfficientNet" not in result.stderr
    assert result.stdout.count("efficientnet_lite0") == 2


def test_an_unwritable_out_is_one_line_and_exit_code_1(tiny_run, tmp_path):
    write_photo_crops(tmp_path / "data", per_class=2, size=32)
    (tmp_path / "file").write_text("a file where a folder should be")
    args = ["evaluate", str(tiny_run), str(tmp_path / "data"), "--out", str(tmp_path / "file")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # no traceback
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "cannot make" in lines[0], lines
