"""The feedback loop (`imgcls.serve.feedback`): the prediction log, corrected images, and their
export as a data set that trains — end to end through a real `imgcls serve` process."""

from __future__ import annotations

import json
import signal
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from helpers import write_photo_crops
from serve_utils import ESPRESSO, process_server
from typer.testing import CliRunner

from imgcls.cli import app
from imgcls.explain import Explainer
from imgcls.serve import feedback
from imgcls.serve.feedback import FeedbackStore, LoggedPrediction, PredictionLog, export_feedback
from imgcls.training.config import TrainConfig
from imgcls.training.loop import train

# The photo-crop classes and the ImageNet label each is corrected to.
CORRECTIONS = {"cat": "tabby", "espresso": "espresso", "rocket": "missile"}


def _row(i: int) -> LoggedPrediction:
    return LoggedPrediction("m", f"{i:064x}", f"{i}.jpg", "tabby", "n02123045", 0.5, 12.5)


def test_log_rows_from_many_threads_are_all_kept(tmp_path) -> None:
    log = PredictionLog(tmp_path / "log.db")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: log.record_predictions([_row(i), _row(i + 1000)]), range(200)))
    rows = log.rows("predictions")
    log.close()
    assert len(rows) == 400
    assert {r["filename"] for r in rows} == {f"{i}.jpg" for i in [*range(200), *range(1000, 1200)]}
    assert set(rows[0]) == {
        "id", "time", "model", "sha256", "filename", "label", "class_id", "score", "latency_ms",
    }  # fmt: skip
    reopened = PredictionLog(tmp_path / "log.db")  # the schema is created only once
    assert len(reopened.rows("predictions")) == 400


def test_the_log_keeps_its_newest_rows_and_reaches_a_lowered_cap_in_chunks(
    tmp_path, monkeypatch
) -> None:
    log = PredictionLog(tmp_path / "log.db")
    log.record_predictions([_row(i) for i in range(40)])  # no cap yet
    monkeypatch.setattr(feedback, "DELETE_CHUNK", 10)
    deleted = [log.record_predictions([_row(40 + i)], max_rows=5) for i in range(5)]
    assert deleted == [10, 10, 10, 9, 1]  # at most a chunk a write: 41 → 31, 32 → 22, ...
    names = [r["filename"] for r in log.rows("predictions")]
    log.close()
    assert names == [f"{i}.jpg" for i in range(40, 45)]


def test_a_relabelled_image_is_kept_once_under_its_newest_label(tmp_path) -> None:
    store = FeedbackStore(tmp_path / "feedback")
    first = store.add(ESPRESSO, "upload.jpeg", "cup")
    second = store.add(ESPRESSO, "no-extension", "espresso")
    assert not first.exists() and second.read_bytes() == ESPRESSO
    assert second.parent.name == "espresso" and second.suffix == ".jpg"  # from the JPEG bytes
    with pytest.raises(ValueError, match="cannot be a folder name"):
        store.add(ESPRESSO, "a.jpg", "../escape")


def test_export_refuses_a_non_empty_target_and_a_missing_source(tmp_path) -> None:
    FeedbackStore(tmp_path / "feedback").add(ESPRESSO, "a.jpg", "espresso")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        export_feedback(tmp_path / "feedback", tmp_path / "taken")
    with pytest.raises(FileNotFoundError, match="no feedback directory"):
        export_feedback(tmp_path / "nothing", tmp_path / "out")


def test_served_corrections_survive_a_kill_and_export_to_a_data_set_that_trains(
    tmp_path,
) -> None:
    photos = write_photo_crops(tmp_path / "photos", per_class=5, size=64)
    log_db, feedback_dir = tmp_path / "log.db", tmp_path / "feedback"
    args = ("--log-db", str(log_db), "--feedback-dir", str(feedback_dir), "--max-wait-ms", "1")
    with process_server(*args) as (process, url), httpx.Client(base_url=url, timeout=60) as http:
        classified = http.post("/v1/classify", files={"file": ("espresso.jpg", ESPRESSO)})
        assert classified.status_code == 200, classified.text
        for folder, label in CORRECTIONS.items():
            for path in sorted((photos / folder).iterdir()):
                response = http.post(
                    "/v1/feedback", files={"file": (path.name, path.read_bytes())},
                    data={"label": label},
                )  # fmt: skip
                assert response.status_code == 200, response.text
        process.send_signal(signal.SIGKILL)  # no shutdown, no checkpoint: a crash
        process.wait(timeout=30)

    with sqlite3.connect(log_db) as db:
        assert db.execute("SELECT label, model FROM predictions").fetchall() == [
            ("espresso", "efficientnet_lite0")
        ]
        assert db.execute("SELECT label, COUNT(*) FROM feedback GROUP BY label").fetchall() == [
            ("espresso", 5), ("missile", 5), ("tabby", 5),
        ]  # fmt: skip

    dataset = tmp_path / "dataset"
    result = CliRunner().invoke(
        app,
        ["feedback", "export", str(dataset), "--feedback-dir", str(feedback_dir), "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["classes"] == {"espresso": 5, "missile": 5, "tabby": 5}
    assert sorted(p.name for p in dataset.iterdir()) == ["espresso", "missile", "tabby"]

    run = tmp_path / "run"
    trained = train(
        TrainConfig(
            data=str(dataset),
            out=str(run),
            model="simple_cnn",
            epochs=1,
            batch_size=8,
            workers=0,
            progress=False,
        )  # fmt: skip
    )
    assert trained.epochs == 1 and trained.num_train + trained.num_val == 15
    config = json.loads((Path(run) / "config.json").read_text())
    assert config["class_names"] == ["espresso", "missile", "tabby"]
    # The retrained run is explained like any CNN, with its own class names.
    photo = sorted((dataset / "tabby").iterdir())[0]
    explanation = Explainer(str(run)).explain(photo, "tabby")
    assert explanation.prediction.label == "tabby"
    assert explanation.heatmap.shape == explanation.image.shape[:2] == (64, 64)
