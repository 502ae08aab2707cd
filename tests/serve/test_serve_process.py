"""`imgcls serve` as a process: graceful SIGTERM, request log, start-up failure, the
address it binds and the backend it runs."""

from __future__ import annotations

import errno
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import cli_env, run_cli
from serve_utils import CAT, CAT_LABELS, process_server, wait_healthy

MB = 1_000_000


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(tmp_path) -> None:
    body_may_finish = threading.Event()
    first_part_sent = threading.Event()
    outcome: dict[str, httpx.Response] = {}

    def slow_upload() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="cat.jpg"\r\n\r\n'
        first_part_sent.set()
        body_may_finish.wait(timeout=30)
        yield CAT + b"\r\n--b--\r\n"

    server_log = tmp_path / "server.log"
    with process_server("--max-wait-ms", "1", "--drain-seconds", "0.5", log=server_log) as (
        process,
        url,
    ):

        def send() -> None:
            outcome["response"] = httpx.post(
                f"{url}/v1/classify",
                content=slow_upload(),
                timeout=60,
                headers={"content-type": "multipart/form-data; boundary=b"},
            )

        client = threading.Thread(target=send)
        client.start()
        assert first_part_sent.wait(timeout=30)
        time.sleep(0.5)  # the server has the request's headers: it is in flight
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        body_may_finish.set()
        client.join(timeout=60)
        assert process.wait(timeout=60) == 0
        log = server_log.read_text()

    response = outcome["response"]
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["predictions"][0]["label"] in CAT_LABELS
    assert '"POST /v1/classify" 200' in log  # one log line per request


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


PART_HEADER = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n\r\n'


def _multipart_stream(megabytes: int) -> Iterator[bytes]:
    yield PART_HEADER
    for _ in range(megabytes):
        yield b"\0" * MB


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_an_upload_over_the_cap_is_refused_without_being_held_in_memory() -> None:
    with process_server("--max-upload-mb", "20") as (process, url):
        before = _peak_rss_mb(process.pid)
        for headers in ({}, {"transfer-encoding": "chunked"}):
            body = _multipart_stream(60)  # streamed: the client holds 1 MB at a time
            if not headers:  # declared length: refused before the body is read
                headers = {"content-length": str(len(PART_HEADER) + 60 * MB)}
            response = httpx.post(
                f"{url}/v1/classify",
                content=body,
                timeout=60,
                headers={"content-type": "multipart/form-data; boundary=b", **headers},
            )
            assert response.status_code == 413, response.text
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert _peak_rss_mb(process.pid) - before < 30


def test_a_model_that_cannot_load_is_a_usage_error() -> None:
    run = run_cli("serve", "--model", "no_such_model_xyz", "--port", "0", "--no-log", timeout=120)
    assert run.returncode == 2
    assert "no_such_model_xyz" in run.stderr


def test_a_taken_port_is_a_usage_error_before_any_model_loads() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = run_cli("serve", "--port", str(port), "--no-log", timeout=120)
    assert run.returncode == 2, run.stderr
    assert f"`--port` {port}" in run.stderr and "in use" in run.stderr
    assert "Traceback" not in run.stderr
    assert "serving" not in run.stderr  # it stopped before loading the model


def test_port_0_serves_on_a_free_port_and_says_which(tiny_run: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "imgcls", "serve", "--model", str(tiny_run), "--port", "0",
               "--no-log", "--feedback-dir", str(tmp_path)]  # fmt: skip
    process = subprocess.Popen(command, env=cli_env(), stderr=subprocess.PIPE, text=True)
    try:
        found = None
        for line in process.stderr:  # the log, until the server says where it listens
            if found := re.search(r"serving .* on (http://127\.0\.0\.1:(\d+))", line):
                break
        assert found is not None and int(found.group(2)) > 0
        wait_healthy(found.group(1), process)
        assert _classify_cat(found.group(1))["results"][0]["predictions"]
    finally:
        process.terminate()
        process.wait(timeout=60)


def _classify_cat(url: str) -> dict:
    response = httpx.post(f"{url}/v1/classify", files={"file": ("cat.jpg", CAT)}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_host_option_binds_that_address_only(tiny_run: Path) -> None:
    # 127.0.0.2 is loopback too on Linux (all of 127/8), so the test stays on this machine.
    with process_server("--model", str(tiny_run), host="127.0.0.2") as (_, url):
        assert url.startswith("http://127.0.0.2:")
        predictions = _classify_cat(url)["results"][0]["predictions"]
        assert {p["label"] for p in predictions} == {"cat", "espresso", "rocket"}
        port = int(url.rsplit(":", 1)[1])
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED


def test_backend_torch_serves_with_pytorch(tiny_run: Path) -> None:
    from imgcls import ImageClassifier

    with process_server("--model", str(tiny_run), "--backend", "torch") as (_, url):
        [listed] = httpx.get(f"{url}/v1/models", timeout=30).json()["models"]
        assert listed["backend"] == "torch" and listed["num_classes"] == 3
        served = _classify_cat(url)["results"][0]["predictions"]
    eager = ImageClassifier(str(tiny_run), backend="torch").classify_image(CAT, top_k=3)
    assert [p["label"] for p in served] == [p.label for p in eager]
    assert [p["score"] for p in served] == pytest.approx([p.score for p in eager], abs=1e-5)


def test_sigterm_after_50_requests_leaves_every_prediction_in_the_log(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    with process_server("--log-db", str(db)) as (process, url), httpx.Client(timeout=60) as client:
        for i in range(50):
            response = client.post(
                f"{url}/v1/classify", files={"file": (f"{i}.jpg", CAT)}, params={"top_k": 1}
            )
            assert response.status_code == 200, response.text
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    with sqlite3.connect(db) as connection:
        names = [row[0] for row in connection.execute("SELECT filename FROM predictions")]
    assert sorted(names) == sorted(f"{i}.jpg" for i in range(50))
