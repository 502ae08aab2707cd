"""`imgcls train`: learning, fine-tuning, resume after a kill, DDP, run directories, errors.

Every data set here is drawn on the spot (shapes with OpenCV, crops of the bundled sample
photos); nothing is downloaded. Sizes are kept small so the file runs in about two
minutes on two CPU cores.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import cli_env, run_cli, write_digit_images, write_photo_crops
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from imgcls import ImageClassifier
from imgcls.cli import app
from imgcls.errors import ConfigError
from imgcls.models.registry import build_model
from imgcls.models.run_dir import read_run_config
from imgcls.models.simple_cnn import SimpleCNN
from imgcls.training.config import TrainConfig
from imgcls.training.loop import train
from imgcls.training.lr_find import find_lr
from imgcls.training.run_writer import load_run_state, save_run_state

SHAPES = ("circle", "square", "triangle")


def draw_shapes(root: Path, per_class: int, size: int = 32, seed: int = 0) -> None:
    """Filled circles, squares and triangles of random colour, size and place."""
    rng = np.random.default_rng(seed)
    for name in SHAPES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = np.full((size, size, 3), int(rng.integers(0, 60)), np.uint8)
            colour = tuple(int(v) for v in rng.integers(140, 256, 3))
            r = int(rng.integers(size // 5, size // 3))
            cx, cy = (int(v) for v in rng.integers(r + 1, size - r - 1, 2))
            if name == "circle":
                cv2.circle(image, (cx, cy), r, colour, -1)
            elif name == "square":
                cv2.rectangle(image, (cx - r, cy - r), (cx + r, cy + r), colour, -1)
            else:
                triangle = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
                cv2.fillPoly(image, [triangle], colour)
            cv2.imwrite(str(root / name / f"{i}.png"), image)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """DATA/train (50 per class), DATA/val and DATA/test (15 per class) of drawn shapes."""
    root = tmp_path_factory.mktemp("shapes")
    draw_shapes(root / "train", 50)
    draw_shapes(root / "val", 15, seed=1)
    draw_shapes(root / "test", 15, seed=2)
    return root


@pytest.fixture(scope="module")
def shapes_run(shapes, tmp_path_factory) -> tuple[Path, object]:
    """simple_cnn trained from scratch on the shapes, shared by the run-directory tests."""
    out = tmp_path_factory.mktemp("runs") / "shapes"
    config = TrainConfig(
        data=str(shapes), out=str(out), model="simple_cnn", epochs=6, batch_size=16,
        lr=3e-3, workers=0, progress=False,
    )  # fmt: skip
    return out, train(config)


def subprocess_env() -> dict[str, str]:
    # Two processes on two cores; a rank that dies of a signal prints its threads' stacks.
    return cli_env(OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")


def ranks_stderr(stderr: str) -> str:
    """What the ranks printed, without torchrun's own report of the failure after it."""
    return stderr.split("failed (exitcode")[0][-6000:]


def read_metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_simple_cnn_from_scratch_learns_shapes(shapes_run):
    out, result = shapes_run
    assert result.best_val_accuracy >= 0.9
    assert result.test_accuracy >= 0.9  # held out: DATA/test, evaluated with best weights
    assert result.epochs == 6 and result.num_train == 150


def test_run_directory_holds_weights_config_metrics_and_curves(shapes_run):
    out, result = shapes_run
    for name in ("best.safetensors", "last.safetensors", "config.json", "metrics.csv",
                 "curves.png", "state.pt"):  # fmt: skip
        assert (out / name).is_file(), name
    config = read_run_config(out)
    assert config["architecture"] == "simple_cnn"
    assert config["class_names"] == list(SHAPES) and config["num_classes"] == 3
    assert config["preprocess"]["input_size"] == [3, 32, 32]
    assert config["train"]["epochs"] == 6
    rows = read_metrics(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert set(rows[0]) >= {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds",
                            "images_per_s"}  # fmt: skip
    state = load_run_state(out / "state.pt")  # weights_only=True: no pickled objects
    assert state["epoch"] == 6


def test_run_directory_classifies_with_its_class_names(shapes_run, shapes):
    out, _ = shapes_run
    classifier = ImageClassifier(str(out))
    assert classifier.labels.names == SHAPES
    predictions = classifier.classify_image(shapes / "test" / "square" / "0.png", top_k=3)
    assert predictions[0].label == "square" and predictions[0].class_id == "square"
    assert abs(sum(p.score for p in predictions) - 1.0) < 1e-6


def test_predict_cli_accepts_a_run_directory(shapes_run, shapes):
    out, _ = shapes_run
    image = shapes / "test" / "circle" / "1.png"
    result = CliRunner().invoke(app, ["predict", str(image), "--model", str(out), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)[0]
    assert record["predictions"][0]["label"] == "circle"
    assert {p["label"] for p in record["predictions"]} == set(SHAPES)


def test_weights_option_overrides_the_run_weights(shapes_run, shapes, tmp_path):
    """A weights file whose last layer has the circle and square rows swapped: scores
    follow the file, in the Python API and in `imgcls predict --weights`."""
    out, _ = shapes_run
    weights = load_file(out / "best.safetensors")
    for name in ("fc.1.weight", "fc.1.bias"):
        weights[name] = weights[name][[1, 0, 2]].contiguous()
    swapped_file = tmp_path / "swapped.safetensors"
    save_file(weights, swapped_file)
    image = shapes / "test" / "circle" / "1.png"

    best = {p.label: p.score for p in ImageClassifier(str(out)).classify_image(image, top_k=3)}
    swapped = ImageClassifier(str(out), weights=swapped_file).classify_image(image, top_k=3)
    assert max(best, key=best.get) == "circle" and best["circle"] > best["square"]
    assert swapped[0].label == "square"
    assert {p.label: p.score for p in swapped} == pytest.approx(
        {"circle": best["square"], "square": best["circle"], "triangle": best["triangle"]},
        abs=1e-5,
    )

    result = CliRunner().invoke(app, ["predict", str(image), "--model", str(out), "--weights",
                                      str(swapped_file), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["predictions"][0]["label"] == "square"


def test_train_weights_file_is_the_start_and_another_class_count_gets_a_fresh_head(
    shapes_run, shapes, tmp_path
):
    """`train --weights`: the backbone starts from the file (frozen here, so it stays so
    exactly) and learns two of the three shape classes on the features it brings."""
    out, _ = shapes_run
    data = tmp_path / "two"
    for split in ("train", "val"):
        for name in ("circle", "square"):
            shutil.copytree(shapes / split / name, data / split / name)
    result = CliRunner().invoke(app, [
        "train", str(data), "--out", str(tmp_path / "run"), "--model", "simple_cnn",
        "--weights", str(out / "best.safetensors"), "--freeze-backbone", "--epochs", "2",
        "--lr", "3e-3", "--workers", "0", "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    start, trained = (
        load_file(out / "best.safetensors"),
        load_file(tmp_path / "run" / "best.safetensors"),
    )
    for name in ("features.0.weight", "pre_logits.2.weight"):
        assert torch.equal(trained[name], start[name]), name
    assert trained["fc.1.weight"].shape == (2, 256) and start["fc.1.weight"].shape == (3, 256)
    assert json.loads(result.stdout)["best_val_accuracy"] >= 0.9


def test_simple_cnn_adapts_to_image_size():
    model, preprocess = build_model("simple_cnn", num_classes=4, img_size=64)
    assert isinstance(model, SimpleCNN) and preprocess.size == (64, 64)
    for size in (28, 64, 100):
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 4)


def test_pretrained_fine_tuning_beats_training_from_scratch(tmp_path):
    """Crops of three photos: ImageNet features separate them after a few steps of the
    head; the same network from random weights cannot, on 27 images and 3 epochs."""
    write_photo_crops(tmp_path / "data", per_class=12, size=80)
    common = dict(data=str(tmp_path / "data"), epochs=3, batch_size=9, img_size=64,
                  val_split=0.25, workers=0, progress=False)  # fmt: skip
    tuned = train(TrainConfig(out=str(tmp_path / "tuned"), freeze_backbone=True, lr=1e-2, **common))
    scratch = train(TrainConfig(out=str(tmp_path / "scratch"), pretrained=False, **common))
    assert tuned.best_val_accuracy >= 0.8
    assert tuned.best_val_accuracy > scratch.best_val_accuracy
    assert read_run_config(tmp_path / "tuned")["architecture"] == "efficientnet_lite0"


def test_killed_run_resumes_and_logs_each_epoch_once(tmp_path, shapes):
    out = tmp_path / "run"
    args = [
        "train", str(shapes), "--out", str(out), "--model", "simple_cnn", "--epochs", "4",
        "--batch-size", "4", "--img-size", "48", "--workers", "0", "--seed", "3",
    ]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "imgcls", *args], env=subprocess_env(), stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not (out / "state.pt").is_file() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.05)
    time.sleep(0.3)  # well into epoch 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    committed = load_run_state(out / "state.pt")["epoch"]
    assert committed < 4, "the run finished before it was killed"
    kept = read_metrics(out)[:committed]  # a row logged after the last state may follow

    resumed = run_cli(*args, "--resume", env=subprocess_env())
    assert resumed.returncode == 0, resumed.stderr
    # The resumed process ran the remaining epochs only: no restart from epoch 1.
    assert f"resuming {out} after epoch {committed}" in resumed.stderr
    ran = [int(k) for k in re.findall(r"^epoch (\d+)/4 \|", resumed.stderr, re.MULTILINE)]
    assert ran == list(range(committed + 1, 5)), resumed.stderr
    assert resumed.stdout.startswith("trained 4 epoch(s)")
    rows = read_metrics(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert rows[:committed] == kept  # their timings too: those epochs were not run again
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path, shapes, monkeypatch):
    common = dict(data=str(shapes), model="simple_cnn", epochs=3, batch_size=16, lr=3e-3,
                  workers=0, progress=False, augment="strong")  # fmt: skip
    train(TrainConfig(out=str(tmp_path / "whole"), **common))

    def save_then_die(path, state):  # a kill right after epoch 2 was committed
        save_run_state(path, state)
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("imgcls.training.loop.save_run_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(tmp_path / "resumed"), **common))
    monkeypatch.undo()
    interrupted = read_metrics(tmp_path / "resumed")
    assert [int(r["epoch"]) for r in interrupted] == [1, 2]
    train(TrainConfig(out=str(tmp_path / "resumed"), resume=True, **common))
    columns = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
    whole, resumed = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "resumed")
    assert [[r[c] for c in columns] for r in resumed] == [[r[c] for c in columns] for r in whole]
    # Epochs 1-2 kept to the microsecond of their timings: only epoch 3 ran again (a
    # silent restart from epoch 1 would repeat the same numbers, but not the same times).
    assert resumed[:2] == interrupted


def test_two_process_ddp_on_cpu_trains_a_usable_run(tmp_path, shapes):
    """--batch-size is the global batch: two processes take 4 images each per step, so
    they make the same optimizer steps (the same learning rate after every epoch) as one
    process with 8, and the model is as good."""
    # --standalone: torchrun finds a free port itself (no race with a port picked here).
    flags = ["--model", "simple_cnn", "--epochs", "4", "--batch-size", "8", "--lr", "3e-3",
             "--workers", "0", "--json"]  # fmt: skip
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--standalone", "-m", "imgcls", "train", str(shapes), "--out", str(tmp_path / "ddp"),
        *flags,
    ]  # fmt: skip

    def run_two() -> subprocess.CompletedProcess:
        return subprocess.run(command, env=subprocess_env(), capture_output=True, text=True,
                              timeout=300)  # fmt: skip

    done = run_two()
    if done.returncode != 0 and "SIGABRT" in done.stderr:
        # A rank has aborted twice in whole-suite CI runs, and never in 110 runs of
        # this command alone here: once more, the aborted rank's stacks kept in a warning.
        warning = f"two-process run aborted, run again:\n{ranks_stderr(done.stderr)}"
        warnings.warn(warning, stacklevel=1)
        shutil.rmtree(tmp_path / "ddp", ignore_errors=True)
        done = run_two()
    assert done.returncode == 0, ranks_stderr(done.stderr)
    report = json.loads(done.stdout)  # rank 0 alone prints
    assert report["epochs"] == 4 and report["best_val_accuracy"] >= 0.6, done.stderr[-2000:]
    two = read_metrics(tmp_path / "ddp")
    assert [int(r["epoch"]) for r in two] == [1, 2, 3, 4]
    assert read_run_config(tmp_path / "ddp")["batch"] == {
        "global": 8, "per_process": 4, "processes": 2,
    }  # fmt: skip
    prediction = ImageClassifier(str(tmp_path / "ddp")).classify_image(
        shapes / "test" / "square" / "0.png"
    )
    assert prediction[0].label in SHAPES

    one = CliRunner().invoke(app, ["train", str(shapes), "--out", str(tmp_path / "one"), *flags])
    assert one.exit_code == 0, one.output
    assert [r["lr"] for r in read_metrics(tmp_path / "one")] == [r["lr"] for r in two]
    assert abs(json.loads(one.stdout)["best_val_accuracy"] - report["best_val_accuracy"]) < 0.15


def test_default_training_of_the_textbook_cnn_on_digits_keeps_their_shape(tmp_path):
    """Handwritten digits at 28 px with every augmentation default: no flips (a mirrored
    2 or 7 is no digit), the whole digit kept in view; the net learns them almost all."""
    data = tmp_path / "data"
    for path, _ in write_digit_images(data / "train", per_class=100)[::5]:
        (data / "test" / path.parent.name).mkdir(parents=True, exist_ok=True)
        path.rename(data / "test" / path.parent.name / path.name)  # a fifth held out
    result = CliRunner().invoke(app, [
        "train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--model",
        "simple_cnn", "--no-pretrained", "--img-size", "28", "--workers", "0", "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["run_dir"] == str(tmp_path / "run")
    augmentation = read_run_config(tmp_path / "run")["augmentation"]
    assert augmentation["hflip"] is False and augmentation["crop"] == "shift", augmentation
    assert report["test_accuracy"] >= 0.97, report


def test_ema_mixup_amp_and_balance_train_and_save_ema_weights(tmp_path, shapes):
    out = tmp_path / "run"
    result = train(TrainConfig(
        data=str(shapes), out=str(out), model="simple_cnn", epochs=2, batch_size=16,
        workers=1, progress=False, ema=True, ema_decay=0.9, mixup=0.2, cutmix=1.0, amp=True,
        balance=True, label_smoothing=0.1, optimizer="sgd", clip_grad=1.0, channels_last=True,
    ))  # fmt: skip
    assert result.epochs == 2
    assert (out / "ema.safetensors").is_file()
    assert "ema_val_acc" in read_metrics(out)[0]
    assert ImageClassifier(str(out)).num_classes == 3


def test_weight_decay_is_recorded_and_shrinks_the_weights(tmp_path):
    """The same short run with and without decay: `--weight-decay` reaches config.json and
    the optimizer, whose decay pulls the conv and linear weights towards zero."""
    draw_shapes(tmp_path / "data", 12)  # 36 images: 8 steps of 4, a few seconds a run

    def weight_norm(decay: str) -> float:
        out = tmp_path / f"decay{decay}"
        result = CliRunner().invoke(app, [
            "train", str(tmp_path / "data"), "--out", str(out), "--model", "simple_cnn",
            "--epochs", "1", "--batch-size", "4", "--lr", "3e-3", "--weight-decay", decay,
            "--augment", "none", "--workers", "0", "--json",
        ])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert read_run_config(out)["train"]["weight_decay"] == float(decay)
        weights = load_file(out / "last.safetensors")  # decay skips norms and biases (1-d)
        return sum(float(t.square().sum()) for t in weights.values() if t.ndim > 1) ** 0.5

    assert weight_norm("30") < 0.8 * weight_norm("0")  # measured: 9.1 against 13.4


def test_early_stopping_stops_after_patience(tmp_path, shapes):
    result = train(TrainConfig(
        data=str(shapes), out=str(tmp_path / "run"), model="simple_cnn", epochs=30,
        batch_size=32, lr=1e-7, workers=0, progress=False, patience=2,
    ))  # fmt: skip
    assert result.epochs < 30
    assert len(read_metrics(tmp_path / "run")) == result.epochs


def test_find_lr_writes_a_plot_and_suggests_a_rate(tmp_path, shapes):
    result = find_lr(
        TrainConfig(
            data=str(shapes),
            out=str(tmp_path),
            model="simple_cnn",
            batch_size=16,
            workers=0,
            progress=False,
        ),  # fmt: skip
        steps=40,
    )
    assert (tmp_path / "lr_find.png").is_file()
    assert 1e-7 <= result.suggested_lr <= 10


def test_lr_suggestion_lies_in_the_falling_part_of_the_curve():
    from imgcls.training.lr_find import _valley

    flat, falling, rising = [1.0] * 20, list(np.linspace(0.99, 0.2, 40)), [0.3, 0.8, 3.0, 9.0]
    index = _valley(flat + falling + rising)
    assert 20 + 40 // 3 <= index <= 20 + 2 * 40 // 3


def test_existing_run_needs_resume(shapes_run, shapes):
    out, _ = shapes_run
    with pytest.raises(ConfigError, match="already holds a run"):
        train(TrainConfig(data=str(shapes), out=str(out), model="simple_cnn", progress=False))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "{missing}", "--out", "{out}"], "no such directory"),
        (["train", "{one_class}", "--out", "{out}"], "need at least 2"),
        (["train", "{empty_class}", "--out", "{out}"], "no usable image"),
        (["train", "{shapes}", "--out", "{out}", "--val-split", "1.5"], "--val-split must be"),
        (["train", "{shapes}", "--out", "{out}", "--epochs", "0"], "--epochs must be"),
        (
            ["train", "{shapes}", "--out", "{out}", "--augment", "heavy"],
            "Invalid value for '--augment'",
        ),
        (["train", "{shapes}"], "--out RUN is required"),
        (["train", "{shapes}", "--out", "{out}", "--model", "resnet5O"], "unknown model"),
        (["train", "{shapes}", "--out", "{out}", "--weights", "{missing}"], "--weights: no such"),
    ],
)
def test_bad_arguments_get_one_line_errors_and_exit_code_2(tmp_path, shapes, args, message):
    (tmp_path / "one" / "a").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "one" / "a" / "x.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "empty" / "b").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "empty" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "empty" / "a").mkdir()
    cv2.imwrite(str(tmp_path / "empty" / "a" / "x.png"), np.zeros((8, 8, 3), np.uint8))
    paths = {
        "missing": tmp_path / "nope", "one_class": tmp_path / "one", "out": tmp_path / "run",
        "empty_class": tmp_path / "empty", "shapes": shapes,
    }  # fmt: skip
    result = CliRunner().invoke(app, [a.format(**paths) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert not (tmp_path / "run" / "best.safetensors").exists()


def test_json_report_names_the_run_and_corrupt_files_are_listed_in_it(tmp_path):
    draw_shapes(tmp_path / "data", 6)
    (tmp_path / "data" / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = CliRunner().invoke(app, [
        "train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--model",
        "simple_cnn", "--epochs", "1", "--workers", "0", "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["run_dir"] == str(tmp_path / "run") and report["epochs"] == 1
    assert 0 <= report["best_val_accuracy"] <= 1
    assert read_run_config(report["run_dir"])["architecture"] == "simple_cnn"
    assert report["skipped"] == 1
    assert "broken.png" in (tmp_path / "run" / "skipped.txt").read_text()
    assert "skipped 1 file" in result.stderr
