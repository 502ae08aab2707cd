"""`imgcls serve` under the signals an orchestrator sends: SIGTERM drains the way Kubernetes
needs (readiness 503 first, the listener open for --drain-seconds, out within
--graceful-timeout whatever clients do, the prediction log flushed), SIGHUP does not kill
it. A real process under load from real clients."""

from __future__ import annotations

import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path

import httpx
from serve_utils import CAT, process_server

DRAIN_S, GRACEFUL_S = 2.0, 5.0


def _slow_uploader(url: str, stop: threading.Event) -> None:
    """A client that sends its body at 1 byte/s and never finishes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        for byte in CAT:
            if stop.is_set():
                return
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # the server closed it: the test is over
                return
            time.sleep(1.0)


def test_sigterm_under_load_drains_then_exits_within_the_graceful_timeout(
    tiny_run: Path, tmp_path: Path
) -> None:
    log_db = tmp_path / "predictions.db"
    args = ("--model", str(tiny_run), "--log-db", str(log_db))
    args += ("--drain-seconds", str(DRAIN_S), "--graceful-timeout", str(GRACEFUL_S))
    answers: list[tuple[float, int | str]] = []  # (when sent, status or the failure)
    readiness: list[tuple[float, int | str]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:  # a new connection each time, as requests from many clients would come
                status: int | str = httpx.post(
                    f"{url}/v1/classify",
                    content=CAT,
                    headers={"content-type": "image/jpeg"},
                    timeout=30,
                ).status_code
            except httpx.ConnectError:
                status = "refused"
                time.sleep(0.05)
            except httpx.TransportError as exc:
                status = type(exc).__name__
            answers.append((sent, status))

    def probe() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                status: int | str = httpx.get(f"{url}/readyz", timeout=5).status_code
            except httpx.ConnectError:
                status = "refused"
            readiness.append((sent, status))
            time.sleep(0.05)

    with process_server(*args, log=tmp_path / "server.log") as (process, url):
        threads = [threading.Thread(target=client) for _ in range(4)]
        threads += [
            threading.Thread(target=probe),
            threading.Thread(target=_slow_uploader, args=(url, stop)),
        ]
        for thread in threads:
            thread.start()
        time.sleep(1.5)  # steady load, and the slow upload in flight
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=GRACEFUL_S + 10)
        exited = time.monotonic()
        stop.set()
        for thread in threads:
            thread.join(timeout=35)
    log = (tmp_path / "server.log").read_text()

    assert code == 0, log[-3000:]
    assert exited - signalled <= GRACEFUL_S + 1.0, log[-3000:]  # the slow client did not hold it
    first_503 = next(sent for sent, status in readiness if sent > signalled and status == 503)
    assert first_503 - signalled < DRAIN_S / 2  # at once (on two busy cores: 0.1-0.6 s)
    assert all(status in (503, "refused") for sent, status in readiness if sent >= first_503)
    during_drain = [
        status for sent, status in answers if signalled < sent < signalled + DRAIN_S - 0.3
    ]
    assert during_drain and all(status == 200 for status in during_drain), during_drain
    assert all(status in (200, "refused") for _, status in answers), answers
    assert not any(
        status == "refused" for sent, status in readiness if sent < signalled + DRAIN_S - 0.3
    )
    served = sum(status == 200 for _, status in answers)
    with sqlite3.connect(log_db) as db:
        (rows,) = db.execute("SELECT COUNT(*) FROM predictions").fetchone()
    assert rows == served  # every answer logged, the queue flushed before the exit


def test_sighup_does_not_kill_the_server(tiny_run: Path, tmp_path: Path) -> None:
    with process_server("--model", str(tiny_run), log=tmp_path / "server.log") as (process, url):
        process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert process.poll() is None
        assert httpx.get(f"{url}/readyz").status_code == 200
    assert "SIGHUP" in (tmp_path / "server.log").read_text()
