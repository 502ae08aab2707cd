"""Multi-label classification end to end, on collages drawn here: 2x2 tiles of plain
colours and gray patterns, 1-3 classes an image. Training (fine-tuning and a logreg head),
per-class thresholds, evaluation, predict, the Python API, ONNX export, REST and v2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from helpers import COLLAGE_CLASSES, run_cli, write_collages, write_photo_crops
from serve_utils import thread_server
from typer.testing import CliRunner

from imgcls import ImageClassifier
from imgcls.cli import app
from imgcls.data.datasets import find_splits
from imgcls.errors import EvaluationError
from imgcls.evaluate import evaluate, find_labelled_images
from imgcls.export import export_model
from imgcls.inference.runtime import read_metadata
from imgcls.models.run_dir import read_run_config
from imgcls.training.config import TrainConfig
from imgcls.training.loop import train
from imgcls.trust.calibration import sigmoid
from imgcls.trust.multilabel import choose_thresholds, mean_average_precision, multilabel_metrics

SPLIT_OF = {"train": range(100), "val": range(100, 130), "test": range(130, 160)}


@pytest.fixture(scope="module")
def collages(tmp_path_factory) -> Path:
    """labels.csv beside img/: 160 collages of 64 px, rows 0-99 train, 100-129 val,
    130-159 test (a split column)."""
    root = tmp_path_factory.mktemp("collages")
    rows = write_collages(root / "img", 160, size=64, seed=0)
    split = {i: name for name, indices in SPLIT_OF.items() for i in indices}
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "split"])
        writer.writerows(
            [f"img/{name}", " ".join(labels), split[i]] for i, (name, labels) in enumerate(rows)
        )
    return root / "labels.csv"


@pytest.fixture(scope="module")
def fine_tuned(collages, tmp_path_factory) -> tuple[Path, str]:
    """EfficientNet-Lite0 from its ImageNet weights, all layers, 4 epochs at 64 px, as a
    user runs it; returns the run and what it printed on stderr."""
    out = tmp_path_factory.mktemp("runs") / "fine-tuned"
    result = CliRunner().invoke(app, [
        "train", str(collages), "--out", str(out), "--epochs", "4", "--batch-size", "16",
        "--img-size", "64", "--workers", "0",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, result.stderr + result.stdout


@pytest.fixture(scope="module")
def logreg(collages, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "logreg"
    result = train(TrainConfig(data=str(collages), out=str(out), classifier="logreg",
                               img_size=64, batch_size=16, progress=False))  # fmt: skip
    return out, result


def test_fine_tuning_learns_several_labels_per_image(fine_tuned):
    out, printed = fine_tuned
    assert "multi-label: " in printed and "sigmoid outputs, binary cross-entropy" in printed
    assert "best val mAP" in printed
    config = read_run_config(out)
    assert config["multi_label"] is True and config["class_names"] == sorted(COLLAGE_CLASSES)
    thresholds = config["thresholds"]
    assert len(thresholds) == 6 and all(0 < t < 1 for t in thresholds)
    assert thresholds != [0.5] * 6  # chosen on validation
    assert config["threshold_fit"]["val_images"] == 30
    assert "temperature" not in config and "reject" not in config  # docs/trust.md says why
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and float(rows[-1]["val_map"]) > 0.5


def test_fine_tuned_run_evaluates_to_a_high_map(fine_tuned, collages, tmp_path):
    out, _ = fine_tuned
    result = CliRunner().invoke(
        app, ["evaluate", str(out), str(collages), "--json", "--out", str(tmp_path / "report")]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["multi_label"] is True and report["num_images"] == 30
    assert report["mAP"] >= 0.9, report
    assert report["micro_f1"] >= 0.8 and report["subset_accuracy"] >= 0.5
    assert 0 <= report["hamming_loss"] <= 0.1 and report["failed"] == []
    assert set(report["per_class"]) == set(COLLAGE_CLASSES)
    for metrics in report["per_class"].values():
        assert set(metrics) == {"precision", "recall", "f1", "ap", "support", "threshold"}
    written = {p.name for p in (tmp_path / "report").iterdir()}
    assert written == {"metrics.json", "predictions.csv", "pr_curves.png",
                       "false_positives.png", "false_negatives.png"}  # fmt: skip
    with open(tmp_path / "report" / "predictions.csv", newline="") as f:
        first = next(csv.DictReader(f))
    assert set(first) == {"path", "true", "predicted", "scores"}


def test_logreg_head_is_one_vs_rest_and_learns_the_collages_too(logreg, collages):
    out, result = logreg
    assert result.multi_label and result.test_map >= 0.9, result
    config = read_run_config(out)
    assert config["classifier"] == "logreg" and len(config["thresholds"]) == 6
    assert all("val_map" in point for point in config["head_search"])
    classifier = ImageClassifier(str(out))
    metrics = evaluate(classifier, find_labelled_images(collages, "test")).metrics()
    assert metrics["mAP"] == pytest.approx(result.test_map, abs=1e-3)


def test_predict_lists_the_labels_above_their_thresholds(fine_tuned, collages, tmp_path):
    out, _ = fine_tuned
    images = [str(collages.parent / "img" / f"{i}.png") for i in SPLIT_OF["test"][:6]]
    result = run_cli("predict", *images, "--model", str(out), "--json", "--top-k", "6")
    assert result.returncode == 0, result.stderr
    thresholds = dict(zip(sorted(COLLAGE_CLASSES), read_run_config(out)["thresholds"], strict=True))
    for record in json.loads(result.stdout):
        predictions = record["predictions"]
        assert len(predictions) == 6
        for p in predictions:
            assert p["present"] == (p["score"] >= thresholds[p["label"]])
            assert p["unknown"] == (not record["labels"])
        assert record["labels"] == [p["label"] for p in predictions if p["present"]]
    # Labels are not cut by --top-k; JSON Lines carry the same objects.
    lines = tmp_path / "out.jsonl"
    run_cli("predict", *images, "--model", str(out), "--top-k", "1", "--output", str(lines))
    streamed = [json.loads(line) for line in lines.read_text().splitlines()]
    everything = json.loads(result.stdout)
    assert [r["labels"] for r in streamed] == [r["labels"] for r in everything]
    assert all(len(r["predictions"]) == 1 for r in streamed)


def test_python_api_results_carry_labels_and_min_score_replaces_the_thresholds(logreg, collages):
    out, _ = logreg
    classifier = ImageClassifier(str(out))
    assert classifier.multi_label and classifier.temperature == 1.0
    image = collages.parent / "img" / "130.png"
    predictions = classifier.classify_image(image, top_k=6)
    assert isinstance(predictions, list) and predictions.labels
    assert list(predictions.labels) == [p.label for p in predictions if p.present]
    assert sum(p.score for p in predictions) != pytest.approx(1.0)  # sigmoids, not a softmax
    everything = classifier.classify_image(image, top_k=6, min_score=0.0)
    assert len(everything.labels) == 6 and not any(p.unknown for p in everything)
    nothing = classifier.classify_image(image, top_k=6, min_score=1.0)
    assert nothing.labels == () and all(p.unknown and not p.present for p in nothing)


def test_onnx_export_carries_the_thresholds(logreg, fine_tuned, collages, tmp_path):
    images = [collages.parent / "img" / f"{i}.png" for i in SPLIT_OF["test"][:8]]
    for out in (logreg[0], fine_tuned[0]):
        exported = tmp_path / f"{out.name}.onnx"
        assert export_model(str(out), exported)["max_abs_diff"] < 1e-4  # of the sigmoids
        metadata = read_metadata(exported)
        assert metadata.multi_label
        assert list(metadata.thresholds) == pytest.approx(read_run_config(out)["thresholds"])
        standalone, run = ImageClassifier(str(exported)), ImageClassifier(str(out))
        assert [p.labels for p in standalone.classify_images(images)] == [
            p.labels for p in run.classify_images(images)
        ]


def test_rest_and_v2_answer_with_labels_and_sigmoid_probabilities(
    fine_tuned, collages, monkeypatch
):
    out, _ = fine_tuned
    image = (collages.parent / "img" / "131.png").read_bytes()
    # Served by a name without "/": v2 routes take the model name as one path segment.
    monkeypatch.chdir(out.parent)
    classifier = ImageClassifier(out.name)
    expected = classifier.predict_proba(classifier.prepare(image)[None])[0]
    with thread_server(models=(out.name,)) as url:
        response = httpx.post(f"{url}/v1/classify", params={"top_k": 6},
                              files={"file": ("131.png", image)}, timeout=60)  # fmt: skip
        assert response.status_code == 200, response.text
        [result] = response.json()["results"]
        assert result["labels"] == [p["label"] for p in result["predictions"] if p["present"]]
        assert result["labels"] == list(classifier.classify_image(image, top_k=1).labels)

        client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)
        tensor = triton.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([image], dtype=np.object_), binary_data=True)
        probabilities = client.infer(classifier.name, [tensor]).as_numpy("probabilities")[0]
        client.close()
    assert probabilities == pytest.approx(expected, abs=1e-5)  # the sigmoids
    assert probabilities.sum() != pytest.approx(1.0, abs=1e-3)


def test_multi_label_sets_hold_each_present_class_by_its_own_threshold(logreg, collages):
    out, _ = logreg
    conformal = read_run_config(out)["conformal"]
    assert conformal["multi_label"] and len(conformal["levels"]["0.9"]) == len(COLLAGE_CLASSES)
    result = CliRunner().invoke(app, [
        "predict", str(collages.parent / "img" / "131.png"), "--model", str(out),
        "--coverage", "0.9", "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    [record] = json.loads(result.stdout)
    assert set(record) == {"path", "predictions", "labels", "prediction_set"}  # no answer
    assert set(record["prediction_set"]) <= set(COLLAGE_CLASSES)


def test_multi_label_flag_turns_single_label_data_into_sigmoid_outputs(tmp_path):
    write_photo_crops(tmp_path / "data", per_class=8, size=32)
    config = TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "run"),
                         model="simple_cnn", pretrained=False, epochs=1, batch_size=8,
                         img_size=32, workers=0, progress=False, multi_label=True)  # fmt: skip
    result = train(config)
    assert result.multi_label and result.best_val_map is not None
    classifier = ImageClassifier(str(tmp_path / "run"))
    assert classifier.multi_label and classifier.labels.names == ("cat", "espresso", "rocket")


@pytest.mark.parametrize("flag", [["--mixup", "0.2"], ["--balance"], ["--label-smoothing", "0.1"]])
def test_options_for_one_label_per_image_are_refused(collages, tmp_path, flag):
    result = CliRunner().invoke(app, ["train", str(collages), "--out", str(tmp_path / "run"),
                                      "--model", "simple_cnn", *flag])  # fmt: skip
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert f"{flag[0]}: not for a multi-label data set" in line


def test_a_single_label_model_refuses_images_with_several_labels(collages):
    with pytest.raises(EvaluationError, match="have several labels"):
        evaluate(ImageClassifier("simple_cnn"), find_labelled_images(collages, "test"))


def test_thresholds_maximise_each_classes_f1():
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [1, 1]])
    scores = np.array([[0.9, 0.2], [0.6, 0.1], [0.4, 0.7], [0.3, 0.65], [0.8, 0.3]])
    thresholds = choose_thresholds(targets, scores)
    # class 0: positives 0.6-0.9, negatives at most 0.4 -> between them, F1 = 1
    assert 0.4 < thresholds[0] <= 0.6 and thresholds[0] == pytest.approx(0.5)
    # class 1: positives 0.7 and 0.3, a negative at 0.65: all in (F1 0.8) beats 0.7 alone
    metrics = multilabel_metrics(targets, scores, scores >= thresholds, ["a", "b"], thresholds)
    assert metrics["per_class"]["a"]["f1"] == 1.0
    assert metrics["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert choose_thresholds(np.zeros((3, 1)), np.full((3, 1), 0.9))[0] == 0.5  # no positive
    assert mean_average_precision(targets, scores) == metrics["mAP"]


def test_multi_label_validation_split_gives_rare_classes_their_share(tmp_path):
    """Held out by each image's rarest class: the rare class lands in both splits."""
    rows = [["common"]] * 20 + [["common", "rare"]] * 5 + [["other"]] * 10
    write_collages(tmp_path / "img", len(rows))  # the pictures; their labels are these
    labels = tmp_path / "labels.csv"
    lines = [f"img/{i}.png,{' '.join(names)}\n" for i, names in enumerate(rows)]
    labels.write_text("path,labels\n" + "".join(lines))
    splits = find_splits(labels, val_split=0.2, seed=0)
    rare = splits.class_names.index("rare")
    assert sum(rare in label for _, label in splits.val) == 1
    assert sum(rare in label for _, label in splits.train) == 4
    assert splits.class_counts()[rare] == 4
    assert sigmoid(np.array([-1000.0, 0.0, 1000.0])).tolist() == [0.0, 0.5, 1.0]
