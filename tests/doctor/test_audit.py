"""`imgcls doctor DATA --labels`: planted label flips rise to the top of the ranking, and
the CSV / gallery it writes are what `doctor --quarantine --only` and a person need."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import write_photo_crops
from typer.testing import CliRunner

from imgcls.cli import app
from imgcls.doctor.audit import out_of_fold_probabilities, rank_by_self_confidence
from imgcls.errors import DataError

CLASSES = ("cat", "espresso", "rocket")
FLIPS = 4


@pytest.fixture(scope="module")
def flipped(tmp_path_factory) -> tuple[Path, set[str]]:
    """36 photo crops, 4 of them moved into the wrong class folder."""
    root = write_photo_crops(tmp_path_factory.mktemp("flipped"), per_class=12, seed=3)
    planted = set()
    for i in range(FLIPS):
        given = CLASSES[(i + 1) % 3]
        shutil.move(root / CLASSES[i % 3] / f"{i}.jpg", root / given / f"flipped{i}.jpg")
        planted.add(f"{given}/flipped{i}.jpg")
    return root, planted


@pytest.fixture(scope="module")
def audit(flipped, tmp_path_factory) -> tuple[dict, Path]:
    root, _ = flipped
    out = tmp_path_factory.mktemp("audit")
    result = CliRunner().invoke(app, ["doctor", str(root), "--labels", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), out


def test_planted_flips_lead_the_ranking(audit, flipped):
    report, _ = audit
    _, planted = flipped
    top = [issue["path"] for issue in report["issues"][:FLIPS]]
    precision_at_k = len(set(top) & planted) / FLIPS
    print(f"precision@{FLIPS}: {precision_at_k:.2f} ({report['num_issues']} flagged)")
    assert precision_at_k >= 0.75, report["issues"]
    assert report["num_images"] == 36 and report["folds"] >= 2
    first = report["issues"][0]
    assert first["suggested_label"] != first["given_label"] and first["self_confidence"] < 0.5


def test_the_csv_lists_paths_first_relative_to_data_and_the_gallery_shows_them(audit, flipped):
    report, out = audit
    root, _ = flipped
    with open(out / "label_issues.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:4] == ["path", "given_label", "suggested_label", "score"]
    assert len(rows) == report["num_issues"]
    assert all((root / row["path"]).is_file() for row in rows)
    page = (out / "label_issues.html").read_text(encoding="utf-8")
    assert page.count("data:image/jpeg;base64,") == len(rows)
    assert rows[0]["path"] in page and rows[0]["suggested_label"] in page


def test_ranking_puts_the_least_likely_given_label_first():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    order, confidence, margin = rank_by_self_confidence(probabilities, np.array([0, 0, 1, 1]))
    assert order.tolist() == [1, 2, 3, 0]
    assert confidence.tolist() == [0.9, 0.2, 0.4, 0.5] and margin[1] == pytest.approx(-0.6)


def test_a_class_with_one_image_is_a_clear_error():
    features = np.random.default_rng(0).normal(size=(5, 4))
    with pytest.raises(DataError, match="at least 2 images"):
        out_of_fold_probabilities(features, np.array([0, 0, 0, 0, 1]))


def test_doctor_on_an_empty_or_missing_folder_is_a_usage_error(tmp_path):
    assert CliRunner().invoke(app, ["doctor", str(tmp_path)]).exit_code == 2
    missing = CliRunner().invoke(app, ["doctor", str(tmp_path / "nope"), "--labels"])
    assert missing.exit_code == 2 and "no such directory" in missing.output
