"""`imgcls tune`: an Optuna study of tiny trials (simple_cnn, 32 px, 1-2 epochs) in SQLite:
run directories, DIR/best, the table and the plot; a killed tune resumed; two processes on
one study; a trial below the median pruned and marked so.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import cli_env, run_cli, write_photo_crops

optuna = pytest.importorskip("optuna", reason="optuna is not installed (pip install imgcls[track])")

from imgcls import ImageClassifier  # noqa: E402

# Scratch-trained simple_cnn trials: learning rate and label smoothing searched, the rest
# fixed small so that a trial takes seconds.
SPACE = {
    "lr": {"low": 1e-3, "high": 1e-2, "log": True},
    "label_smoothing": [0.0, 0.1],
    "augment": "none",
}
TINY = ["--model", "simple_cnn", "--no-pretrained", "--img-size", "32", "--batch-size", "8",
        "--workers", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    write_photo_crops(root, per_class=10, size=32)
    return root


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("space") / "space.json"
    path.write_text(json.dumps(SPACE))
    return path


def load_study(out: Path):
    return optuna.load_study(study_name="imgcls", storage=f"sqlite:///{out / 'study.db'}")


def test_tune_runs_trials_into_run_directories_and_links_the_best(photos, space, tmp_path):
    out = tmp_path / "tune"
    done = run_cli("tune", str(photos), "--out", str(out), "--trials", "4", "--epochs", "1",
                   "--space", str(space), *TINY, "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["trials"] == 4 and report["complete"] + report["pruned"] == 4
    assert "trial 0:" in done.stderr and "trial 3:" in done.stderr  # progress on stderr
    study = load_study(out)
    assert len(study.trials) == 4
    for trial in study.trials:
        assert Path(trial.user_attrs["run_dir"]).parent == out / "trials"
    best = out / "best"
    assert best.resolve() == Path(study.best_trial.user_attrs["run_dir"]).resolve()
    assert report["best_value"] == pytest.approx(study.best_value)
    assert ImageClassifier(str(best)).classify_image(next((photos / "cat").iterdir()))
    table = (out / "trials.csv").read_text().splitlines()
    assert len(table) == 5 and "params_lr" in table[0]
    assert (out / "importance.png").stat().st_size > 1000
    assert set(report["best_params"]) == {"lr", "label_smoothing"}


def test_a_killed_tune_resumes_and_two_processes_share_one_study(photos, space, tmp_path):
    out = tmp_path / "tune"
    command = [sys.executable, "-m", "imgcls", "tune", str(photos), "--out", str(out),
               "--trials", "4", "--epochs", "1", "--space", str(space), *TINY]  # fmt: skip
    first = subprocess.Popen(command, env=cli_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not (out / "study.db").is_file() or not _finished(out):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.3)
    first.send_signal(signal.SIGKILL)  # mid-study: one trial done, the next one running
    first.wait()
    done_before = _finished(out)
    assert 1 <= done_before < 4

    both = [subprocess.Popen(command, env=cli_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    for process in both:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    study = load_study(out)
    finished = [t for t in study.trials if t.state.is_finished() and t.state.name != "FAIL"]
    # Each process stops once the study holds 4 finished trials; one trial apiece may be
    # under way at that moment.
    assert 4 <= len(finished) <= 5
    run_dirs = [t.user_attrs["run_dir"] for t in finished]
    assert len(set(run_dirs)) == len(run_dirs)  # every trial its own run directory
    killed = [t for t in study.trials if t.state.name == "RUNNING"]
    assert len(killed) <= 1  # the trial the kill interrupted (failed by heartbeat later)


def _finished(out: Path) -> int:
    try:
        return sum(t.state.is_finished() for t in load_study(out).trials)
    except Exception:  # the study is not created yet
        return 0


def test_a_trial_below_the_median_of_finished_trials_is_pruned(tmp_path, space):
    """Random pixels with random labels cannot be learnt: below the perfect scores of two
    finished trials, the trial is pruned after its first epoch and marked PRUNED."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "noise" / name).mkdir(parents=True)
        for i in range(24):
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            cv2.imwrite(str(tmp_path / "noise" / name / f"{i}.png"), image)
    out = tmp_path / "tune"
    out.mkdir()
    study = optuna.create_study(study_name="imgcls", storage=f"sqlite:///{out / 'study.db'}",
                                direction="maximize")  # fmt: skip
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={1: 1.0, 2: 1.0}))
    done = run_cli("tune", str(tmp_path / "noise"), "--out", str(out), "--trials", "3",
                   "--epochs", "2", "--space", str(space), *TINY, "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    trial = load_study(out).trials[2]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]  # stopped after epoch 1 of 2
    assert json.loads(done.stdout)["pruned"] == 1
    assert "pruned after epoch 1" in done.stderr
