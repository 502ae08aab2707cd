"""`imgcls select`: what to label next, from a real (tiny) run over real image files; the
ranking's two halves (margin, k-center greedy) on vectors whose answer is known."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli, write_photo_crops

from imgcls.data.label_files import read_label_file
from imgcls.errors import DataError
from imgcls.select import k_center_greedy, rank, select_images, uncertainty, write_queue


def test_margin_is_smallest_where_the_top_two_scores_are_closest():
    probabilities = np.array([[0.9, 0.05, 0.05], [0.45, 0.44, 0.11], [0.6, 0.3, 0.1]])

    assert np.argsort(uncertainty(probabilities)).tolist() == [1, 2, 0]
    assert rank(probabilities, np.eye(3), 2, "uncertainty") == [1, 2]


def test_k_center_greedy_takes_one_of_many_near_copies():
    rng = np.random.default_rng(0)
    copies = np.ones((50, 8)) + rng.normal(0, 1e-3, (50, 8))  # one image, 50 times
    others = np.eye(8)[:3] * 5
    features = np.vstack([copies, others])

    picks = k_center_greedy(features, 4)

    assert sum(pick < 50 for pick in picks) == 1
    assert sorted(pick for pick in picks if pick >= 50) == [50, 51, 52]


def test_k_center_greedy_avoids_what_is_already_labelled():
    features = np.eye(4)

    assert sorted(k_center_greedy(features, 2, labelled=np.eye(4)[:2])) == [2, 3]


def test_every_strategy_returns_the_budget_without_repeats():
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(5), 40)
    features = rng.normal(size=(40, 16))
    for strategy in ("uncertainty+diversity", "uncertainty", "diversity", "random"):
        picks = rank(probabilities, features, 7, strategy)
        assert len(picks) == len(set(picks)) == 7, strategy
    with pytest.raises(ValueError, match="strategy must be one of"):
        rank(probabilities, features, 7, "loudest")


@pytest.fixture(scope="module")
def copies(tmp_path_factory) -> Path:
    """Three distinct photo crops, each four times under different names."""
    root = tmp_path_factory.mktemp("copies")
    write_photo_crops(root / "crops", per_class=1, size=32)
    pool = root / "pool"
    pool.mkdir()
    for i, crop in enumerate(sorted((root / "crops").rglob("*.jpg"))):
        for copy in range(4):
            shutil.copy(crop, pool / f"{copy}-{i}.jpg")
    return pool


def _contents(paths: list[str]) -> set[str]:
    return {hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def test_the_default_spends_the_budget_on_different_images(tiny_run, copies):
    chosen = select_images(copies, str(tiny_run), budget=3)
    by_margin = select_images(copies, str(tiny_run), budget=3, strategy="uncertainty")

    assert chosen.considered == 12
    assert len(_contents(chosen.paths)) == 3  # one of each image
    assert len(_contents(by_margin.paths)) == 1  # the least sure image, three times
    assert all(reason.startswith(("uncertain", "unknown")) for reason in chosen.reasons)


def test_the_queue_is_a_label_file_with_an_empty_label_column(tiny_run, copies, tmp_path):
    out = write_queue(select_images(copies, str(tiny_run), budget=4), tmp_path / "queue.csv")

    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "label", "guess", "score", "margin", "reason"]
    assert len(rows) == 4 and all(row["label"] == "" for row in rows)
    assert all(row["guess"] in ("cat", "espresso", "rocket") for row in rows)
    assert all(Path(row["path"]).is_absolute() for row in rows)  # not under the CSV's folder
    # Labelled, it is a data set.
    for row, label in zip(rows, ("cat", "rocket", "cat", "espresso"), strict=True):
        row["label"] = label
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert len(read_label_file(out).rows) == 4


def test_a_label_files_unlabelled_rows_are_the_candidates(tiny_run, copies, tmp_path):
    files = sorted(copies.iterdir())
    listing = tmp_path / "labels.csv"
    with open(listing, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([[str(files[0]), "cat"], [str(files[1]), ""], [str(files[2]), " "]])

    chosen = select_images(listing, str(tiny_run), budget=5)

    assert chosen.considered == 2
    assert sorted(chosen.paths) == sorted(str(p) for p in files[1:3])


def test_sources_that_offer_nothing_say_so(tiny_run, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        select_images(tmp_path / "empty", str(tiny_run), budget=2)
    with pytest.raises(DataError, match="no such directory"):
        select_images(tmp_path / "missing", str(tiny_run), budget=2)


def test_cli_writes_the_queue_and_json_alone_on_stdout(tiny_run, copies, tmp_path):
    out = tmp_path / "queue.csv"

    result = run_cli("select", str(copies), "--model", str(tiny_run), "--budget", "2",
                     "--out", str(out), "--json")  # fmt: skip

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["out"] == str(out) and document["considered"] == 12
    with open(out, newline="") as handle:
        written = [Path(row["path"]).name for row in csv.DictReader(handle)]
    assert [Path(item["path"]).name for item in document["selected"]] == written


def test_cli_refuses_an_unknown_strategy_as_a_usage_error(tiny_run, copies, tmp_path):
    result = run_cli("select", str(copies), "--model", str(tiny_run), "--budget", "2",
                     "--out", str(tmp_path / "q.csv"), "--strategy", "loudest")  # fmt: skip

    assert result.returncode == 2
    assert "loudest" in result.stderr and "Traceback" not in result.stderr
