"""A disk that never fills: the prediction log's row and age limits, the feedback cap (507)
and a log whose disk refuses writes mid-run, against real servers and real SQLite files."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from helpers import run_cli
from serve_utils import CAT, ESPRESSO, metric, process_server, thread_server

from imgcls.serve.feedback import LoggedPrediction, PredictionLog
from imgcls.serve.log_writer import LogWriter


def _small_jpeg(side: int = 48) -> bytes:
    image = cv2.imdecode(np.frombuffer(CAT, np.uint8), cv2.IMREAD_COLOR)
    return cv2.imencode(".jpg", cv2.resize(image, (side, side)))[1].tobytes()


def _count(db: Path) -> int:
    with sqlite3.connect(db) as connection:  # a reader beside the server, as an analyst
        return connection.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]


def _wait_until(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=30).text


def test_the_log_stays_under_its_row_cap_across_thousands_of_requests(
    tiny_run: Path, tmp_path: Path
) -> None:
    db, cap, requests = tmp_path / "log.db", 500, 2000
    image = _small_jpeg()
    largest = 0  # the most rows a reader saw at any moment
    done = threading.Event()

    def watch() -> None:
        nonlocal largest
        with contextlib.closing(sqlite3.connect(db)) as reader:  # the server made the file
            while not done.is_set():
                count = reader.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
                largest = max(largest, count)
                time.sleep(0.01)

    args = ("--model", str(tiny_run), "--log-db", str(db), "--log-max-rows", str(cap))
    with process_server(*args, log=tmp_path / "server.log") as (_, url):
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(8) as pool:
                statuses = set(
                    pool.map(
                        lambda _: (
                            client.post(
                                "/v1/classify",
                                content=image,
                                headers={"content-type": "image/jpeg"},
                            ).status_code
                        ),
                        range(requests),
                    )
                )
            assert statuses == {200}
            _wait_until(
                lambda: (
                    metric(_metrics(url), "imgcls_prediction_log_deleted_total") == requests - cap
                )
            )
        finally:
            done.set()
            watcher.join()
        assert metric(_metrics(url), "imgcls_prediction_log_dropped_total") == 0
    assert 0 < largest <= cap
    with sqlite3.connect(db) as connection:
        first, last, count = connection.execute(
            "SELECT MIN(id), MAX(id), COUNT(*) FROM predictions"
        ).fetchone()
    assert count == cap and last - first + 1 == cap and last == requests  # the newest kept


def _rows(count: int, age: timedelta, prefix: str) -> list[LoggedPrediction]:
    when = (datetime.now(UTC) - age).isoformat(timespec="milliseconds")
    return [
        LoggedPrediction("m", "0" * 64, f"{prefix}{i}.jpg", "cat", "n1", 0.9, 5.0, time=when)
        for i in range(count)
    ]


def test_rows_past_the_age_limit_are_deleted_by_the_writer(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "log.db")
    log.record_predictions(_rows(30, timedelta(days=8), "old"))  # left by an earlier run
    log.record_predictions(_rows(5, timedelta(days=6), "recent"))
    deleted: list[int] = []
    writer = LogWriter(log, max_age_days=7, on_deleted=deleted.append)
    try:
        _wait_until(lambda: sum(deleted) == 30)  # on start, then once a minute
        writer.put(_rows(2, timedelta(0), "new"))
    finally:
        writer.close()
    names = [row["filename"] for row in log.rows("predictions")]
    log.close()
    assert names == [f"recent{i}.jpg" for i in range(5)] + ["new0.jpg", "new1.jpg"]


def test_feedback_beyond_its_cap_is_507_and_counted(tmp_path: Path) -> None:
    feedback = tmp_path / "feedback"
    cap_mb = (len(CAT) + len(ESPRESSO) // 2) / 1e6  # room for the cat, not for both
    with thread_server(feedback_dir=str(feedback), feedback_max_mb=cap_mb) as url:

        def correct(data: bytes, label: str) -> httpx.Response:
            return httpx.post(
                f"{url}/v1/feedback",
                files={"file": ("photo.jpg", data)},
                data={"label": label},
                timeout=60,
            )

        assert correct(CAT, "tabby").status_code == 200
        refused = correct(ESPRESSO, "espresso")
        assert refused.status_code == 507, refused.text
        error = refused.json()["error"]
        assert error["type"] == "InsufficientStorage"
        assert "--feedback-max-mb" in error["message"] and "export" in error["message"]
        assert correct(CAT, "tiger cat").status_code == 200  # re-labelled: takes no more room
        text = _metrics(url)
        assert metric(text, "imgcls_feedback_refused_total") == 1
        assert metric(text, "imgcls_feedback_bytes") == len(CAT)
    assert [p.relative_to(feedback).parts[0] for p in feedback.rglob("*.jpg")] == ["tiger cat"]


@pytest.fixture
def strace() -> str:
    """strace, once it has shown that it may attach to a process it did not start."""
    if shutil.which("strace") is None:
        pytest.skip("needs strace (apt-get install strace; .ci/run installs it)")
    with subprocess.Popen(["sleep", "30"]) as target:
        command = ["timeout", "1", "strace", "-qq", "-o", "/dev/null", "-p", str(target.pid)]
        probe = subprocess.run(command, capture_output=True, text=True)
        target.kill()
    if probe.returncode != 124:  # 124: still attached when `timeout` ended it
        pytest.skip(f"strace may not attach here (ptrace): {probe.stderr.strip()}")
    return "strace"


def test_a_log_whose_disk_turns_read_only_mid_run_never_fails_a_classification(
    strace: str, tmp_path: Path
) -> None:
    """The kernel answers the server's writes with EROFS, as after a read-only remount
    (which Linux refuses while the server holds the file open, hence strace's fault
    injection: the unmodified server process sees exactly that disk)."""
    db, log = tmp_path / "log.db", tmp_path / "server.log"
    with process_server("--log-db", str(db), log=log) as (process, url):

        def classify() -> None:
            response = httpx.post(
                f"{url}/v1/classify", files={"file": ("cat.jpg", CAT)}, timeout=60
            )
            assert response.status_code == 200, response.text

        classify()
        _wait_until(lambda: _count(db) == 1)
        read_only = subprocess.Popen(
            [strace, "-f", "-qq", "-o", "/dev/null", "-p", str(process.pid),
             "-e", "trace=pwrite64", "-e", "inject=pwrite64:error=EROFS"]
        )  # fmt: skip
        try:

            def writes_failed() -> bool:
                classify()  # keeps answering while its log writes fail
                return metric(_metrics(url), "imgcls_prediction_log_write_errors_total") >= 2

            _wait_until(writes_failed)
        finally:
            read_only.terminate()  # strace detaches: the disk is writable again
            read_only.wait(timeout=30)
        written = _count(db)
        classify()
        _wait_until(lambda: _count(db) == written + 1)
        # The writer says so once the write has committed: the line may follow the row.
        _wait_until(lambda: "succeed again" in log.read_text())
    text = log.read_text()
    assert text.count("failed (OperationalError: disk I/O error)") == 1  # said once
    assert text.count("writes to") == 1 and "succeed again" in text
    assert " 500 " not in text


def test_a_log_that_cannot_be_opened_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the log's directory should be")
    run = run_cli("serve", "--port", "0", "--log-db", str(blocker / "log.db"), timeout=120)
    assert run.returncode == 2, run.stderr
    assert f"{blocker / 'log.db'}: cannot open the prediction log" in run.stderr
    assert run.stderr.rstrip().endswith("give another --log-db, or --no-log")


@pytest.mark.parametrize(
    "args", [("--log-max-rows", "0"), ("--log-max-days", "-1"), ("--feedback-max-mb", "0")]
)
def test_a_limit_that_would_keep_nothing_is_a_usage_error(args: tuple[str, str]) -> None:
    run = run_cli("serve", "--port", "0", "--no-log", *args, timeout=60)
    assert run.returncode == 2 and args[0] in run.stderr, run.stderr
