"""Runs with a class taxonomy and conformal sets, end to end: nested class folders train a
run that answers the parent on images that mix two siblings and the leaf on clean ones;
its prediction sets and answers reach `predict --json`."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from imgcls import ImageClassifier
from imgcls.cli import app
from imgcls.errors import ConfigError, DataError
from imgcls.models.run_dir import read_run_config
from imgcls.training.config import TrainConfig
from imgcls.training.loop import train

CARDS = {  # class: (parent folder, RGB)
    "hearts": ("red", (220, 20, 20)),
    "diamonds": ("red", (230, 150, 0)),
    "spades": ("blue", (20, 20, 200)),
    "clubs": ("blue", (0, 180, 220)),
}
SIBLING = {"hearts": "diamonds", "diamonds": "hearts", "spades": "clubs", "clubs": "spades"}


def card(name: str, rng: np.random.Generator, jitter: float = 0.08) -> np.ndarray:
    """A plain 64 px card of the class's colour (RGB), its brightness (± `jitter`) and
    noise drawn by `rng`."""
    size = 64
    rgb = np.array(CARDS[name][1], float) * rng.uniform(1 - jitter, 1 + jitter)
    image = np.broadcast_to(rgb, (size, size, 3)) + rng.normal(0, 12, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def blend(a: str, b: str, rng: np.random.Generator) -> np.ndarray:
    """Half one card, half another, pixel by pixel: a card no one can tell."""
    mixed = card(a, rng, jitter=0.03).astype(int) + card(b, rng, jitter=0.03)
    return (mixed // 2).astype(np.uint8)


@pytest.fixture(scope="module")
def nested_run(tmp_path_factory) -> Path:
    """DATA/{train,val}/<suit colour>/<suit>/*.png; each suit also holds half as many
    blends with its sibling (labelled either way, as ambiguous cards are). A logistic-regression
    head on EfficientNet-Lite0 features at 64 px is trained with `--taxonomy folders`."""
    root = tmp_path_factory.mktemp("cards")
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("val", 12)):
        for name, (parent, _) in CARDS.items():
            folder = root / "data" / split / parent / name
            folder.mkdir(parents=True)
            for i in range(count):
                cv2.imwrite(str(folder / f"{i}.png"), card(name, rng)[..., ::-1])
            for i in range(count // 2):
                cv2.imwrite(str(folder / f"b{i}.png"), blend(name, SIBLING[name], rng)[..., ::-1])
    out = root / "run"
    config = TrainConfig(
        data=str(root / "data"), out=str(out), classifier="logreg", img_size=64, workers=0,
        progress=False, taxonomy="folders", reject_score="max_prob",
    )  # fmt: skip
    train(config)
    return out


def test_nested_folders_answer_the_parent_on_mixed_siblings_and_the_leaf_on_clean_cards(
    nested_run,
):
    config = read_run_config(nested_run)
    assert config["class_names"] == ["clubs", "diamonds", "hearts", "spades"]
    assert config["taxonomy"]["parents"] == {n: parent for n, (parent, _) in CARDS.items()}
    classifier = ImageClassifier(str(nested_run))
    rng = np.random.default_rng(1)
    for name, (parent, _) in CARDS.items():
        clean = classifier.classify_image(card(name, rng))
        assert clean.answer.label == name and clean.answer.path == (parent, name)
        # Mixed cards: the model splits them between the siblings (each its own way), so
        # most answer the parent; none answers the other colour.
        mixed = [classifier.classify_image(blend(name, SIBLING[name], rng)) for _ in range(8)]
        answers = [m.answer.label for m in mixed]
        assert answers.count(parent) >= 6, answers
        assert set(answers) <= {parent, name, SIBLING[name]}, answers
        assert all(m.answer.probability >= 0.9 for m in mixed)
    across = classifier.classify_image(blend("hearts", "spades", rng))
    assert across.answer is None and across.to_dict()["answer"] is None
    # a lower bar is met by a leaf
    lenient = ImageClassifier(str(nested_run), answer_confidence=0.3)
    assert lenient.classify_image(blend("hearts", "diamonds", rng)).answer.label in CARDS


def test_predict_json_carries_the_set_and_the_answer(nested_run, tmp_path):
    rng = np.random.default_rng(2)
    for name in ("hearts", "mixed"):
        image = card("hearts", rng) if name == "hearts" else blend("spades", "clubs", rng)
        cv2.imwrite(str(tmp_path / f"{name}.png"), image[..., ::-1])
    result = CliRunner().invoke(app, [
        "predict", str(tmp_path), "--model", str(nested_run), "--coverage", "0.9", "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    hearts, mixed = sorted(json.loads(result.stdout), key=lambda r: r["path"])
    assert hearts["prediction_set"] == ["hearts"]
    assert hearts["answer"]["path"] == ["red", "hearts"]
    assert set(hearts["answer"]) == {"label", "probability", "path"}
    assert mixed["answer"]["label"] == "blue"
    assert all(label in ("spades", "clubs") for label in mixed["prediction_set"])
    assert (
        mixed["prediction_set"]
        == [p["label"] for p in mixed["predictions"]][: len(mixed["prediction_set"])]
    )  # most probable first


def test_the_run_stores_conformal_thresholds_that_shrink_with_the_level(nested_run):
    conformal = read_run_config(nested_run)["conformal"]
    assert conformal["score"] == "lac" and set(conformal["levels"]) == {"0.8", "0.9", "0.95"}
    levels = conformal["levels"]
    assert levels["0.8"] <= levels["0.9"] <= levels["0.95"]
    assert len(conformal["calibration_scores"]) == 4 * (
        12 + 6
    )  # every validation image: 12 cards and 6 blends a suit


def test_a_taxonomy_that_is_neither_a_file_nor_folders_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(ConfigError, match="`taxonomy`: no such file"):
        TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), taxonomy="nope.csv").check()


def test_two_nested_classes_of_one_name_are_refused(tmp_path):
    from imgcls.data.datasets import find_splits

    for parent in ("red", "blue"):
        (tmp_path / "train" / parent / "hearts").mkdir(parents=True)
    with pytest.raises(DataError, match="two class folders named 'hearts'"):
        find_splits(tmp_path, nested=True)


def test_the_server_adds_sets_on_request_and_answers_always(nested_run):
    import httpx
    from serve_utils import thread_server

    image = cv2.imencode(".png", card("clubs", np.random.default_rng(3))[..., ::-1])[1].tobytes()
    with thread_server(models=(str(nested_run),)) as url:
        plain = httpx.post(f"{url}/v1/classify", files={"file": ("c.png", image)}, timeout=60)
        with_set = httpx.post(
            f"{url}/v1/classify", params={"coverage": 0.9}, files={"file": ("c.png", image)},
            timeout=60,
        )  # fmt: skip
        wrong = httpx.post(f"{url}/v1/classify", params={"coverage": 1.5},
                           files={"file": ("c.png", image)}, timeout=60)  # fmt: skip
    assert plain.status_code == 200 and with_set.status_code == 200, with_set.text
    [result] = plain.json()["results"]
    assert "prediction_set" not in result and result["answer"]["path"][0] == "blue"
    assert "clubs" in with_set.json()["results"][0]["prediction_set"]
    assert wrong.status_code in (400, 422) and "coverage" in wrong.text  # never a 500


def test_evaluate_reports_each_level_and_draws_it(nested_run, tmp_path):
    result = CliRunner().invoke(app, [
        "evaluate", str(nested_run), str(nested_run.parent / "data"), "--split", "val",
        "--json", "--out", str(tmp_path / "report"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["conformal"]
    assert report["score"] == "lac" and list(report["levels"]) == ["0.8", "0.9", "0.95"]
    at_90 = report["levels"]["0.9"]
    # the calibration split itself: by construction at least the level is covered
    assert at_90["coverage"] >= 0.9 and 1 <= at_90["max_set_size"] <= 4
    assert set(at_90["per_class_coverage"]) == set(CARDS)
    assert at_90["weakest_class_coverage"] == min(at_90["per_class_coverage"].values())
    assert (tmp_path / "report" / "conformal.png").stat().st_size > 10_000
