"""`imgcls serve` beyond classification: the prediction log, corrections (`/v1/feedback`),
Grad-CAM (`/v1/explain`) and the labels list, on a real uvicorn server."""

from __future__ import annotations

import base64
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from serve_utils import CAT, ESPRESSO, metric, thread_server

from imgcls.serve.feedback import PredictionLog, sha256_hex
from imgcls.serve.log_writer import LogWriter


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-feedback")
    return {"log_db": root / "log.db", "feedback_dir": root / "feedback"}


@pytest.fixture(scope="module")
def client(paths) -> Iterator[httpx.Client]:
    settings = {key: str(value) for key, value in paths.items()}
    with (
        thread_server(max_wait_ms=5, **settings) as url,
        httpx.Client(base_url=url, timeout=120) as session,
    ):
        yield session


def _rows(db: Path, table: str) -> list[dict]:
    with sqlite3.connect(db) as connection:  # a second reader, as an analyst would open it
        connection.row_factory = sqlite3.Row
        return [dict(r) for r in connection.execute(f"SELECT * FROM {table} ORDER BY id")]


def _wait_for_rows(db: Path, table: str, count: int, timeout_s: float = 30) -> list[dict]:
    """The rows of `table` once it has `count` of them: the writer works off the request
    path, so a row lands a moment after its answer."""
    deadline = time.monotonic() + timeout_s
    while len(rows := _rows(db, table)) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return rows


def test_each_classified_image_is_logged_with_its_hash_top1_and_latency(client, paths) -> None:
    before = len(_rows(paths["log_db"], "predictions"))
    response = client.post(
        "/v1/classify", files=[("file", ("cat.jpg", CAT)), ("file", ("espresso.jpg", ESPRESSO))]
    )
    assert response.status_code == 200, response.text
    rows = _wait_for_rows(paths["log_db"], "predictions", before + 2)[before:]
    assert [r["filename"] for r in rows] == ["cat.jpg", "espresso.jpg"]
    espresso = rows[1]
    assert espresso["sha256"] == sha256_hex(ESPRESSO) and rows[0]["sha256"] == sha256_hex(CAT)
    assert espresso["model"] == "efficientnet_lite0"
    assert espresso["label"] == "espresso" and espresso["class_id"] == "n07920052"
    top1 = response.json()["results"][1]["predictions"][0]
    assert espresso["score"] == pytest.approx(top1["score"])
    assert 0 < espresso["latency_ms"] < 60_000
    assert espresso["time"].endswith("+00:00")  # ISO 8601, UTC


def test_concurrent_requests_all_land_in_the_log(client, paths) -> None:
    before = len(_rows(paths["log_db"], "predictions"))
    with ThreadPoolExecutor(8) as pool:
        statuses = list(
            pool.map(
                lambda i: (
                    client.post(
                        "/v1/classify", files={"file": (f"{i}.jpg", CAT)}, params={"top_k": 1}
                    ).status_code
                ),
                range(16),
            )
        )
    assert statuses == [200] * 16
    rows = _wait_for_rows(paths["log_db"], "predictions", before + 16)[before:]
    assert sorted(r["filename"] for r in rows) == sorted(f"{i}.jpg" for i in range(16))
    with sqlite3.connect(paths["log_db"]) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_raw_body_upload_is_logged_with_an_empty_filename(client, paths) -> None:
    before = len(_rows(paths["log_db"], "predictions"))
    response = client.post("/v1/classify", content=ESPRESSO, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200, response.text
    [row] = _wait_for_rows(paths["log_db"], "predictions", before + 1)[before:]
    assert row["filename"] == "" and row["sha256"] == sha256_hex(ESPRESSO)
    assert row["label"] == "espresso"


@pytest.fixture
def stalled_writer(monkeypatch) -> threading.Event:
    """Every prediction-log write waits until the returned event is set, as on a stalled
    disk; closing a writer (a clean stop) sets it."""
    released = threading.Event()
    write, close = PredictionLog.record_predictions, LogWriter.close

    def slow_write(self, rows, max_rows=None) -> int:
        assert released.wait(timeout=120), "the test never released the writer"
        return write(self, rows, max_rows)

    def release_then_close(self) -> None:
        released.set()
        close(self)

    monkeypatch.setattr(PredictionLog, "record_predictions", slow_write)
    monkeypatch.setattr(LogWriter, "close", release_then_close)
    return released


def _classify_numbered(url: str, count: int, workers: int = 1) -> list[int]:
    with httpx.Client(base_url=url, timeout=120) as client, ThreadPoolExecutor(workers) as pool:
        return list(
            pool.map(
                lambda i: (
                    client.post(
                        "/v1/classify", files={"file": (f"{i}.jpg", CAT)}, params={"top_k": 1}
                    ).status_code
                ),
                range(count),
            )
        )


def test_a_clean_stop_writes_every_queued_row(stalled_writer, tmp_path) -> None:
    db = tmp_path / "log.db"
    with thread_server(log_db=str(db), max_wait_ms=5) as url:
        assert _classify_numbered(url, 50, workers=8) == [200] * 50
        assert _rows(db, "predictions") == []  # all answered, none written yet
        text = httpx.get(f"{url}/metrics").text
        assert metric(text, "imgcls_prediction_log_queue_depth") >= 1
    rows = _rows(db, "predictions")
    assert sorted(r["filename"] for r in rows) == sorted(f"{i}.jpg" for i in range(50))


def test_a_stalled_writer_drops_and_counts_rows_while_requests_succeed(
    stalled_writer, tmp_path, caplog
) -> None:
    db = tmp_path / "log.db"
    with (
        caplog.at_level(logging.WARNING, logger="imgcls.serve"),
        thread_server(log_db=str(db), log_queue=4) as url,
    ):
        assert _classify_numbered(url, 12) == [200] * 12
        text = httpx.get(f"{url}/metrics").text
        dropped = metric(text, "imgcls_prediction_log_dropped_total")
        assert dropped >= 1 and metric(text, "imgcls_prediction_log_queue_depth") == 4
    assert caplog.text.count("dropping new rows") == 1
    assert len(_rows(db, "predictions")) + dropped == 12  # written or counted, never both


def test_failed_log_writes_are_counted_said_once_and_never_fail_a_request(
    monkeypatch, tmp_path, caplog
) -> None:
    db = tmp_path / "log.db"
    write = PredictionLog.record_predictions
    disk = {"full": True}

    def write_to_a_full_disk(self, rows, max_rows=None) -> int:
        if disk["full"]:
            raise sqlite3.OperationalError("database or disk is full")
        return write(self, rows, max_rows)

    monkeypatch.setattr(PredictionLog, "record_predictions", write_to_a_full_disk)
    with (
        caplog.at_level(logging.WARNING, logger="imgcls.serve"),
        thread_server(log_db=str(db)) as url,
    ):
        assert _classify_numbered(url, 3) == [200] * 3
        deadline = time.monotonic() + 30
        while not (errors := _log_metric(url, "imgcls_prediction_log_write_errors_total")):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert errors >= 1
        disk["full"] = False
        assert _classify_numbered(url, 1) == [200]
        assert [r["filename"] for r in _wait_for_rows(db, "predictions", 1)] == ["0.jpg"]
    assert caplog.text.count("database or disk is full") == 1
    assert "succeed again" in caplog.text


def _log_metric(url: str, name: str) -> float:
    return metric(httpx.get(f"{url}/metrics").text, name)


def test_feedback_keeps_the_image_under_its_corrected_label(client, paths) -> None:
    response = client.post(
        "/v1/feedback", files={"file": ("photo.jpg", CAT)}, data={"label": "Persian cat"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    digest = sha256_hex(CAT)
    assert body == {
        "model": "efficientnet_lite0",
        "sha256": digest,
        "label": "Persian cat",
        "path": f"Persian cat/{digest}.jpg",
    }
    assert (paths["feedback_dir"] / "Persian cat" / f"{digest}.jpg").read_bytes() == CAT
    [row] = [r for r in _rows(paths["log_db"], "feedback") if r["sha256"] == digest]
    assert row["label"] == "Persian cat" and row["path"] == body["path"]

    # Corrected again: the newest label wins, the image is not kept twice.
    again = client.post(
        "/v1/feedback", files={"file": ("photo.jpg", CAT)}, data={"label": "n02123045"}
    )
    assert again.status_code == 200 and again.json()["label"] == "tabby"  # class id → label
    assert list(paths["feedback_dir"].glob(f"*/{digest}.*")) == [
        paths["feedback_dir"] / "tabby" / f"{digest}.jpg"
    ]


@pytest.mark.parametrize(
    ("files", "data", "status", "kind"),
    [
        ({"file": ("cat.jpg", CAT)}, {"label": "no such class"}, 422, "UnknownLabel"),
        ({"file": ("notes.txt", b"not an image")}, {"label": "tabby"}, 422, "ImageError"),
        ({"file": ("cat.jpg", CAT)}, {}, 400, "BadRequest"),
    ],
)
def test_feedback_refuses_unknown_labels_and_non_images(
    client, paths, files, data, status, kind
) -> None:
    response = client.post("/v1/feedback", files=files, data=data)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == kind and error["message"]
    assert not (paths["feedback_dir"] / "no such class").exists()


def test_labels_lists_the_classes_feedback_accepts(client) -> None:
    body = client.get("/v1/models/efficientnet_lite0/labels").json()
    assert len(body["labels"]) == 1000 and body["labels"][967] == "espresso"
    assert client.get("/v1/models/nope/labels").status_code == 404


def test_explain_returns_a_png_of_the_photo_with_its_heat_map(client) -> None:
    response = client.post("/v1/explain", files={"file": ("espresso.jpg", ESPRESSO)})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-class-index"] == "967"
    overlay = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    photo = cv2.imdecode(np.frombuffer(ESPRESSO, np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape == photo.shape
    assert np.abs(overlay.astype(int) - photo).mean() > 10  # a heat map is drawn on it


def test_explain_json_for_a_chosen_class(client) -> None:
    response = client.post(
        "/v1/explain",
        params={"class": "tabby", "format": "json"},
        files={"file": ("cat.jpg", CAT)},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["prediction"]["label"] == "tabby" and body["filename"] == "cat.jpg"
    assert base64.b64decode(body["image_png_base64"]).startswith(b"\x89PNG")


def test_the_web_page_warms_grad_cam_in_the_background(caplog) -> None:
    with (
        caplog.at_level(logging.INFO, logger="imgcls.serve"),
        thread_server(models=("simple_cnn",)) as url,
    ):
        assert "Grad-CAM" not in caplog.text  # ready without it: nothing asked for a map yet
        assert httpx.get(url).status_code == 200
        deadline = time.monotonic() + 120
        while "Grad-CAM for simple_cnn ready" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.1)
        explained = httpx.post(f"{url}/v1/explain", files={"file": ("cat.jpg", CAT)}, timeout=60)
        assert explained.status_code == 200, explained.text


@pytest.mark.parametrize(
    ("params", "upload", "status"),
    [
        ({"class": "no such class"}, ("cat.jpg", CAT), 422),
        ({}, ("notes.txt", b"hello"), 422),
        ({"model": "nope"}, ("cat.jpg", CAT), 404),
        ({"format": "gif"}, ("cat.jpg", CAT), 400),
    ],
)
def test_explain_errors_are_json(client, params, upload, status) -> None:
    response = client.post("/v1/explain", params=params, files={"file": upload})
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]
