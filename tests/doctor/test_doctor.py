"""`imgcls doctor`: planted problems are found, distinct photos are never called duplicates,
quarantine and restore round-trip, and the Hamming search agrees with brute force."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import SAMPLES, run_cli
from typer.testing import CliRunner

from imgcls.cli import app
from imgcls.doctor import duplicates as doctor
from imgcls.doctor.checks import diagnose
from imgcls.doctor.duplicates import near_duplicate_pairs

PHOTOS = ("cat", "espresso", "rocket")


def write_tiles(root: Path, split_rows: dict[str, tuple[int, ...]], size: int = 96) -> Path:
    """root/<split>/<photo>/<row><col>.jpg: the 3x3 non-overlapping tiles of each sample
    photo, so every file is a distinct real picture (no two share any pixels)."""
    for name in PHOTOS:
        photo = cv2.imread(str(SAMPLES / f"{name}.jpg"))
        height, width = photo.shape[:2]
        for split, rows in split_rows.items():
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for r in rows:
                for c in range(3):
                    tile = photo[r * height // 3 : (r + 1) * height // 3, c * width // 3 :]
                    tile = tile[:, : width // 3]
                    tile = cv2.resize(tile, (size, size), interpolation=cv2.INTER_AREA)
                    cv2.imwrite(str(folder / f"{r}{c}.jpg"), tile)
    return root


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """A train/test data set of distinct tiles plus one of each problem the doctor finds."""
    root = write_tiles(tmp_path / "data", {"train": (0, 1), "test": (2,)})
    train = root / "train"
    shutil.copy(train / "cat/00.jpg", train / "cat/00_copy.jpg")  # byte copy, same class
    shutil.copy(train / "cat/01.jpg", train / "espresso/conflict.jpg")  # copy in another class
    shutil.copy(train / "rocket/10.jpg", root / "test/rocket/leak.jpg")  # train image in test
    photo = cv2.imread(str(train / "espresso/11.jpg"))
    cv2.imwrite(str(train / "espresso/11.png"), photo)  # same pixels, other bytes
    small = cv2.resize(photo, (61, 61), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(train / "espresso/11_small.jpg"), small, [cv2.IMWRITE_JPEG_QUALITY, 40])
    rocket = cv2.imread(str(train / "rocket/12.jpg"))
    resized = cv2.resize(rocket, (150, 150), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(root / "test/rocket/12_big.jpg"), resized, [cv2.IMWRITE_JPEG_QUALITY, 60])
    data = (train / "cat/02.jpg").read_bytes()
    (train / "cat/truncated.jpg").write_bytes(data[: len(data) // 2])
    (train / "rocket/notes.jpg").write_text("not an image, only named like one")
    (train / "rocket/readme.txt").write_text("labels were checked by hand")
    (train / "empty").mkdir()
    (train / "LICENSE.txt").write_text("CC-BY")  # beside the class folders, not in one
    return root


def doctor_cli(*args: str):
    """`imgcls doctor ARGS` run in this process (the real command, without a Python start-up)."""
    return CliRunner().invoke(app, ["doctor", *args])


def _groups(groups: list[dict]) -> set[frozenset[str]]:
    return {frozenset(g["paths"]) for g in groups}


def test_finds_every_planted_problem_and_no_distinct_picture_is_a_duplicate(planted: Path):
    report = diagnose(planted)

    assert {c["path"] for c in report.corrupt} == {
        "train/cat/truncated.jpg",
        "train/rocket/notes.jpg",
    }
    assert "truncated" in next(c["reason"] for c in report.corrupt if "truncated" in c["path"])
    assert _groups(report.duplicates) == {
        frozenset({"train/cat/00.jpg", "train/cat/00_copy.jpg"}),
        frozenset({"train/cat/01.jpg", "train/espresso/conflict.jpg"}),
        frozenset({"train/rocket/10.jpg", "test/rocket/leak.jpg"}),
        frozenset({"train/espresso/11.jpg", "train/espresso/11.png"}),
    }
    kinds = {frozenset(g["paths"]): (g["kind"], g["cross_class"]) for g in report.duplicates}
    assert kinds[frozenset({"train/espresso/11.jpg", "train/espresso/11.png"})][0] == "pixels"
    assert kinds[frozenset({"train/cat/01.jpg", "train/espresso/conflict.jpg"})] == ("bytes", True)
    assert _groups(report.near_duplicates) == {
        frozenset(
            {"train/espresso/11.jpg", "train/espresso/11.png", "train/espresso/11_small.jpg"}
        ),
        frozenset({"train/rocket/12.jpg", "test/rocket/12_big.jpg"}),
    }
    assert _groups(report.leaks) == {
        frozenset({"train/rocket/10.jpg", "test/rocket/leak.jpg"}),
        frozenset({"train/rocket/12.jpg", "test/rocket/12_big.jpg"}),
    }
    assert report.classes["train"] == {"cat": 7, "empty": 0, "espresso": 9, "rocket": 6}
    assert report.classes["test"] == {"cat": 3, "espresso": 3, "rocket": 5}
    warned = {w["kind"]: w for w in report.warnings}
    assert warned["non_image_files"]["paths"] == ["train/rocket/readme.txt"]
    assert warned["empty_classes"]["paths"] == ["train/empty"]
    assert warned["stray_files"]["paths"] == ["train/LICENSE.txt"]
    assert report.num_images == 33


def test_cli_json_report_and_html_with_thumbnails(planted: Path, tmp_path: Path):
    run = run_cli("doctor", str(planted), "--json", "--out", str(tmp_path / "report"))
    assert run.returncode == 1, run.stderr  # corrupt files and leaks were found
    result = json.loads(run.stdout)
    for key in ("num_images", "classes", "corrupt", "duplicates", "near_duplicates", "leaks"):
        assert key in result
    assert result["num_images"] == 33 and len(result["leaks"]) == 2
    assert "train/cat/truncated.jpg" in result["corrupt"]  # paths, as INTERFACE.md says
    assert "truncated" in result["corrupt_reasons"]["train/cat/truncated.jpg"]
    page = (tmp_path / "report/report.html").read_text()
    assert "test/rocket/leak.jpg" in page
    thumbs = sorted((tmp_path / "report/thumbs").glob("*.jpg"))
    assert thumbs and all(cv2.imread(str(t)) is not None for t in thumbs)
    assert json.loads((tmp_path / "report/report.json").read_text())["num_images"] == 33


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_quarantine_keeps_one_of_each_group_and_restore_undoes_it(planted: Path, tmp_path: Path):
    before = _tree(planted)
    held = tmp_path / "held"
    run = doctor_cli(str(planted), "--quarantine", str(held), "--json")
    assert run.exit_code == 1, run.stderr
    moved = set(json.loads(run.stdout)["quarantined"])
    assert {"train/cat/truncated.jpg", "train/rocket/notes.jpg"} <= moved
    assert "test/rocket/leak.jpg" in moved and "train/rocket/10.jpg" not in moved  # train kept
    assert "test/rocket/12_big.jpg" in moved and "train/rocket/12.jpg" not in moved
    assert len(moved & {"train/cat/00.jpg", "train/cat/00_copy.jpg"}) == 1
    assert all(not (planted / p).exists() and (held / p).is_file() for p in moved)

    after = diagnose(planted)
    assert not after.corrupt and not after.duplicates and not after.leaks

    run = doctor_cli("--restore", str(held / "manifest.json"))
    assert run.exit_code == 0, run.stderr
    assert _tree(planted) == before
    assert not (held / "manifest.json").exists()


def test_only_quarantines_exactly_the_files_of_a_csv(planted: Path, tmp_path: Path):
    listing = tmp_path / "mislabels.csv"
    with open(listing, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "given", "suggested"])
        writer.writerow(["train/cat/10.jpg", "cat", "espresso"])
        writer.writerow([str(planted / "test/espresso/21.jpg"), "espresso", "cat"])
    held = tmp_path / "held"
    args = (str(planted), "--only", str(listing), "--quarantine", str(held), "--json")
    run = doctor_cli(*args)
    assert run.exit_code == 0, run.stderr
    assert json.loads(run.stdout)["quarantined"] == ["test/espresso/21.jpg", "train/cat/10.jpg"]
    assert sorted(p.relative_to(held).as_posix() for p in held.rglob("*.jpg")) == [
        "test/espresso/21.jpg",
        "train/cat/10.jpg",
    ]

    listing.write_text("file\ntrain/cat/11.jpg\n")
    run = doctor_cli(*args)
    assert run.exit_code == 2
    assert "no 'path' column" in run.stderr and "Traceback" not in run.stderr


def test_usage_errors_name_the_problem_without_a_traceback(tmp_path: Path):
    bad_manifest = tmp_path / "manifest.json"
    bad_manifest.write_text('{"moves": "everything"}')
    cases = [
        ((str(tmp_path / "missing"),), "no such data directory"),
        ((str(tmp_path), "--only", "x.csv"), "--only FILE.csv needs --quarantine"),
        (("--restore", str(tmp_path / "none.json")), "no such manifest"),
        (("--restore", str(bad_manifest)), "not a doctor quarantine manifest"),
    ]
    for args, message in cases:
        run = doctor_cli(*args)
        assert run.exit_code == 2, (args, run.stderr)
        assert message in run.stderr
        assert isinstance(run.exception, SystemExit)  # a clean exit, not an escaped error


def test_class_folder_layout_warns_of_tiny_extreme_gray_and_imbalance(tmp_path: Path):
    root = write_tiles(tmp_path / "data", {"": (0, 1, 2)})
    cat = cv2.imread(str(root / "cat/00.jpg"))
    noise = np.random.default_rng(0).integers(0, 256, (60, 400, 3), dtype=np.uint8)
    cv2.imwrite(str(root / "cat/tiny.png"), noise[:20, :20])  # not resized tiles: those
    cv2.imwrite(str(root / "cat/banner.png"), noise)  # would rightly be near-duplicates
    cv2.imwrite(str(root / "cat/gray.png"), cv2.cvtColor(cat, cv2.COLOR_BGR2GRAY)[::-1])
    (root / "rare").mkdir()  # 1 image against cat's 12: imbalanced
    cv2.imwrite(str(root / "rare/only.jpg"), cv2.imread(str(root / "rocket/00.jpg"))[::-1])

    report = diagnose(root)

    assert report.layout == "classes" and list(report.classes) == ["all"]
    assert report.classes["all"]["rare"] == 1 and report.classes["all"]["cat"] == 12
    warned = {w["kind"]: w for w in report.warnings}
    assert warned["tiny_images"]["paths"] == ["cat/tiny.png"]
    assert warned["extreme_aspect"]["paths"] == ["cat/banner.png"]
    assert warned["grayscale_mixed"]["paths"] == ["cat/gray.png"]
    assert "'cat' has 12" in warned["imbalance"]["message"]
    assert not report.leaks and not report.duplicates and not report.near_duplicates


def test_json_warnings_name_an_imbalance_and_stay_empty_for_a_healthy_set(tmp_path: Path):
    root = write_tiles(tmp_path / "data", {"": (0, 1, 2)})  # 9 distinct tiles per class
    healthy = doctor_cli(str(root), "--json")
    assert healthy.exit_code == 0, healthy.stderr
    assert json.loads(healthy.stdout)["warnings"] == []

    (root / "rare").mkdir()
    cv2.imwrite(str(root / "rare/only.jpg"), cv2.imread(str(root / "rocket/00.jpg"))[::-1])
    imbalanced = doctor_cli(str(root), "--json")
    assert imbalanced.exit_code == 0, imbalanced.stderr  # a warning is not a failure
    [warning] = json.loads(imbalanced.stdout)["warnings"]
    assert warning["kind"] == "imbalance"
    assert "has 9 images and 'rare' 1" in warning["message"]


def test_blocked_hamming_search_matches_brute_force(monkeypatch):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 300, dtype=np.uint64)
    noise = [
        sum(1 << int(b) for b in rng.choice(64, rng.integers(0, 12), replace=False)) for _ in base
    ]
    phash = np.concatenate([base, base ^ np.array(noise, dtype=np.uint64)])
    dhash = np.concatenate([base, base ^ np.roll(np.array(noise, dtype=np.uint64), 1)])
    monkeypatch.setattr(doctor, "_BLOCK", 64)  # many tiles, including partial ones
    monkeypatch.setattr(doctor, "_COLUMNS", 100)

    found = near_duplicate_pairs(phash, dhash, 8, 8)

    expected = [
        (i, j, bin(int(phash[i]) ^ int(phash[j])).count("1"))
        for i in range(len(phash))
        for j in range(i + 1, len(phash))
        if bin(int(phash[i]) ^ int(phash[j])).count("1") <= 8
        and bin(int(dhash[i]) ^ int(dhash[j])).count("1") <= 8
    ]
    assert sorted(found) == expected and len(expected) > 50
