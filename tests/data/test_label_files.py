"""Label files: a CSV or JSON Lines file of (path, labels, split) instead of class folders,
read by the one scanner that training, evaluation, features and the doctor share."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import write_photo_crops
from typer.testing import CliRunner

from imgcls.cli import app
from imgcls.data.datasets import find_splits, scan_dataset
from imgcls.data.label_files import read_label_file, read_unlabelled, split_labels
from imgcls.doctor.checks import diagnose
from imgcls.errors import LabelFileError
from imgcls.evaluate import read_split
from imgcls.features import extract_features
from imgcls.training.config import TrainConfig
from imgcls.training.loop import train


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_image(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((20, 24, 3), value, np.uint8))
    return path


def folder_rows(root: Path) -> list[list[str]]:
    """(path relative to root, class) of every image of a DATA/<class>/* folder."""
    return [[p.relative_to(root).as_posix(), p.parent.name] for p in sorted(root.glob("*/*"))]


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    """DATA/<cat|espresso|rocket>/*.jpg, 32 px, and beside the images LABELS.csv listing
    them all (no split column)."""
    root = write_photo_crops(tmp_path_factory.mktemp("crops"), per_class=12, size=32)
    write_csv(root / "labels.csv", ["path", "label"], folder_rows(root))
    return root


def test_a_label_file_is_read_into_the_table_the_folder_scanner_builds(crops, tmp_path):
    """Rows in another order, some absolute, the file elsewhere: the same (image, labels)
    rows in the same order, the same classes, the same split."""
    rows = folder_rows(crops)[::-1]
    listed = [
        [str(crops / p) if i % 3 else f"{crops.name}/{p}", c] for i, (p, c) in enumerate(rows)
    ]
    elsewhere = write_csv(crops.parent / "elsewhere.csv", ["path", "label"], listed)
    folders = scan_dataset(crops)
    for path in (crops / "labels.csv", elsewhere):
        table = scan_dataset(path)
        assert table.kind == "classes" and table.label_file == path
        assert table.classes == folders.classes == {"all": ["cat", "espresso", "rocket"]}
        assert table.splits["all"] == folders.splits["all"]
        assert not table.multi_label
    from_file, from_folders = find_splits(elsewhere, seed=3), find_splits(crops, seed=3)
    assert from_file.val == from_folders.val
    assert from_file.class_names == from_folders.class_names and not from_file.multi_label


def test_split_column_and_json_lines_with_label_lists(tmp_path):
    for i in range(5):
        write_image(tmp_path / "img" / f"{i}.png", i)
    jsonl = write_jsonl(
        tmp_path / "labels.jsonl",
        [
            {"path": "img/0.png", "labels": ["a"], "split": "train"},
            {"path": "img/1.png", "labels": "b", "split": "train"},
            {"path": "img/2.png", "label": ["a", "b", "a"], "split": "val"},
            {"path": "img/3.png", "labels": ["b"], "split": "test"},
            {"path": "img/4.png", "labels": "a", "split": "train"},
        ],
    )
    table = scan_dataset(jsonl)
    assert table.kind == "splits" and list(table.splits) == ["train", "val", "test"]
    assert table.splits["val"] == [(tmp_path / "img" / "2.png", ("a", "b"))]
    assert table.multi_label
    splits = find_splits(jsonl)
    assert splits.multi_label and splits.class_names == ["a", "b"]
    assert [label for _, label in splits.train] == [(0,), (0,), (1,)]
    assert splits.val == [(tmp_path / "img" / "2.png", (0, 1))]


def test_several_labels_are_split_on_spaces_or_the_delimiter():
    assert split_labels("cat  dog cat") == ("cat", "dog")
    assert split_labels("tiger cat|dog", "|") == ("tiger cat", "dog")
    assert split_labels(" ; ", ";") == ()


def test_every_bad_row_is_named_with_its_row_number(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"{i}.png", i)
    rows = [
        ["0.png", "cat", "train"],  # row 2: fine
        ["missing.png", "cat", "train"],  # row 3
        ["1.png", "", "train"],  # row 4: no label
        ["2.png", "dog", "valid"],  # row 5: not a split
        ["0.png", "dog", "val"],  # row 6: listed again
        ["", "dog", "val"],  # row 7: no path
        *[[f"gone{i}.png", "cat", "train"] for i in range(3)],  # rows 8-10
    ]
    labels = write_csv(tmp_path / "labels.csv", ["path", "labels", "split"], rows)
    with pytest.raises(LabelFileError) as raised:
        read_label_file(labels)
    problems = dict(raised.value.problems)
    assert sorted(problems) == [3, 4, 5, 6, 7, 8, 9, 10]
    assert problems[3] == f"no such file {tmp_path / 'missing.png'}"
    assert problems[4] == "1.png: no label"
    assert problems[5] == "2.png: split 'valid' is not train, val, test"
    assert problems[6] == f"{tmp_path / '0.png'} is also listed at row 2"
    assert problems[7] == "no path"
    message = str(raised.value)
    assert message.startswith(f"{labels}: 8 bad row(s): row 3: no such file")
    assert "row 7: no path; and 3 more" in message and "row 8" not in message


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "file,label\nx.png,cat\n", "needs a 'path' and a 'label' (or 'labels') column"),
        ("b.csv", "path,label,labels\nx.png,cat,dog\n", "both 'label' and 'labels'"),
        ("c.csv", "path,label\n", "no rows"),
        (
            "d.jsonl",
            '{"path": "x.png", "labels": "cat"}\n[1, 2]\n{oops\n',
            "row 2: not a JSON object",
        ),
        ("e.jsonl", '{"path": "x.png", "labels": {"a": 1}}\n', "labels must be a string or a list"),
        ("f.txt", "path,label\n", "a label file ends in .csv or .jsonl"),
    ],
)
def test_a_file_that_is_no_label_file_gets_one_clear_error(tmp_path, name, content, message):
    write_image(tmp_path / "x.png")
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=re.escape(message)):
        read_label_file(tmp_path / name)


def test_bad_rows_stop_training_with_one_line_and_skip_missing_skips_them(crops, tmp_path):
    rows = folder_rows(crops) + [["gone/1.png", "cat"], ["gone/2.png", "rocket"]]
    labels = write_csv(
        tmp_path / "labels.csv", ["path", "label"], [[str(crops / p), c] for p, c in rows]
    )
    args = ["train", str(labels), "--out", str(tmp_path / "run"), "--model", "simple_cnn",
            "--no-pretrained", "--epochs", "1", "--img-size", "32", "--workers", "0",
            "--json"]  # fmt: skip
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2, refused.output
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith(f"error: {labels}: 2 bad row(s): row 38: no such file")
    assert line.endswith("(--skip-missing skips rows whose file is missing)")

    done = CliRunner().invoke(app, [*args, "--skip-missing"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["skipped"] == 2 and "skipped 2 file(s)" in done.stderr
    assert "gone/1.png" in (tmp_path / "run" / "skipped.txt").read_text()


def test_a_single_label_file_trains_exactly_like_the_folder_it_lists(crops, tmp_path):
    """Same classes, same split, same epochs to the last digit, same evaluation."""
    common = dict(model="simple_cnn", pretrained=False, epochs=2, batch_size=8, img_size=32,
                  lr=3e-3, workers=0, progress=False, reject_score="max_prob")  # fmt: skip
    results = {
        name: train(TrainConfig(data=str(data), out=str(tmp_path / name), **common))
        for name, data in (("folder", crops), ("file", crops / "labels.csv"))
    }
    runs = {name: tmp_path / name for name in results}
    configs = {name: json.loads((run / "config.json").read_text()) for name, run in runs.items()}
    assert configs["file"]["class_names"] == configs["folder"]["class_names"]
    assert configs["file"]["data"] == configs["folder"]["data"] == {
        "train": 30, "val": 6, "test": 0, "skipped": 0
    }  # fmt: skip
    assert "multi_label" not in configs["file"]
    metrics = {name: (run / "metrics.csv").read_text().splitlines() for name, run in runs.items()}
    drop_times = [[r.split(",")[:5] for r in rows] for rows in metrics.values()]
    assert drop_times[0] == drop_times[1]  # epoch, losses and accuracies
    assert configs["file"]["temperature"] == configs["folder"]["temperature"]
    assert results["file"].best_val_accuracy == results["folder"].best_val_accuracy

    evaluations = [
        json.loads(
            CliRunner().invoke(app, ["evaluate", str(runs[name]), str(data), "--json"]).stdout
        )
        for name, data in (("folder", crops), ("file", crops / "labels.csv"))
    ]
    for key in ("accuracy", "confusion_matrix", "per_class", "num_images"):
        assert evaluations[0][key] == evaluations[1][key], key


def test_evaluate_takes_a_split_of_the_file_and_names_a_split_it_lacks(crops, tmp_path):
    rows = [[str(crops / p), c, "test" if i % 4 == 0 else "train"]
            for i, (p, c) in enumerate(folder_rows(crops))]  # fmt: skip
    labels = write_csv(tmp_path / "labels.csv", ["path", "labels", "split"], rows)
    samples, skipped = read_split(labels, "test")
    assert len(samples) == 9 and not skipped
    missing = CliRunner().invoke(app, ["evaluate", "simple_cnn", str(labels), "--split", "val"])
    assert missing.exit_code == 2
    assert "has no val rows (its splits: train, test) (choose one with --split)" in missing.stderr


def test_the_doctor_checks_the_files_and_labels_of_a_label_file(tmp_path):
    for i in range(6):
        write_image(tmp_path / "img" / f"{i}.png", 40 * i)
    write_image(tmp_path / "img" / "copy.png", 0)  # pixel-identical to 0.png
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG broken")
    rows = [["img/0.png", "cat", "train"], ["img/1.png", "cat dog", "train"],
            ["img/2.png", "dog", "train"], ["img/3.png", "dog", "val"],
            ["img/4.png", "cat", "test"], ["img/copy.png", "dog", "test"],
            ["img/broken.png", "cat", "train"], ["img/gone.png", "cat", "train"]]  # fmt: skip
    labels = write_csv(tmp_path / "labels.csv", ["path", "labels", "split"], rows)

    with pytest.raises(ValueError, match="row 9: no such file"):
        diagnose(labels)
    report = diagnose(labels, skip_missing=True).to_dict()
    assert report["label_file"] == str(labels) and report["multi_label"]
    assert report["classes"] == {"train": {"cat": 2, "dog": 2}, "val": {"dog": 1},
                                 "test": {"cat": 1, "dog": 1}}  # fmt: skip
    assert report["corrupt"] == ["img/broken.png"]
    [leak] = report["leaks"]
    assert leak["paths"] == ["img/0.png", "img/copy.png"] and leak["cross_class"]
    missing = next(w for w in report["warnings"] if w["kind"] == "missing_files")
    assert missing["paths"] == ["img/gone.png"]

    result = CliRunner().invoke(app, ["doctor", str(labels), "--json"])
    assert result.exit_code == 2 and "--skip-missing" in result.stderr
    moved = CliRunner().invoke(
        app, ["doctor", str(labels), "--skip-missing", "--quarantine", str(tmp_path / "q")]
    )
    assert moved.exit_code == 2 and "delete the flagged rows instead" in moved.stderr


def test_features_of_a_label_file_carry_its_labels(tmp_path):
    for i in range(3):
        write_image(tmp_path / "img" / f"{i}.png", 60 * i)
    labels = write_jsonl(
        tmp_path / "labels.jsonl",
        [
            {"path": f"img/{i}.png", "labels": names}
            for i, names in enumerate([["cat"], ["cat", "dog"], ["dog"]])
        ]  # fmt: skip
        + [{"path": "img/gone.png", "labels": "cat"}],
    )
    found = extract_features(labels, "simple_cnn", skip_missing=True)
    assert found.paths == ["img/0.png", "img/1.png", "img/2.png"]
    assert found.labels == ["cat", "cat dog", "dog"]
    assert found.vectors.shape[0] == 3 and found.skipped == ["img/gone.png"]


def test_unlabelled_rows_are_the_ones_with_an_empty_label(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(b"")
    listing = tmp_path / "queue.jsonl"
    listing.write_text(
        '{"path": "a.png", "label": "cat"}\n{"path": "b.png", "label": ""}\n'
        '{"path": "c.png", "labels": []}\n'
    )
    assert read_unlabelled(listing) == [tmp_path / "b.png", tmp_path / "c.png"]

    listing.write_text('{"path": "gone.png", "label": ""}\n')
    with pytest.raises(LabelFileError, match="row 1: no such file"):
        read_unlabelled(listing)
