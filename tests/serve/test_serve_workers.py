"""`imgcls serve --workers 2`: worker processes on one port, metrics summed across them,
a drain of every worker on SIGTERM, a dead worker replaced."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serve_utils import CAT, metric, process_server

CLASSIFIED = re.compile(r'\[(\d+)\] \S+ "POST /v1/classify" 200')
READY = re.compile(r"worker (\d) \(pid (\d+)\) ready")


def _classify(url: str) -> httpx.Response:
    # A new connection each time: the kernel hands each to one of the workers.
    return httpx.post(f"{url}/v1/classify", files={"file": ("cat.jpg", CAT)}, timeout=60)


def _wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def workers(tiny_run: Path, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A server of two workers, its URL and its log file."""
    log = tmp_path_factory.mktemp("workers") / "server.log"
    with process_server("--model", str(tiny_run), "--workers", "2", log=log) as (_, url):
        _wait_for(lambda: len(READY.findall(log.read_text())) == 2)
        yield url, log


def test_two_workers_answer_on_one_port(workers: tuple[str, Path]) -> None:
    url, log = workers
    with ThreadPoolExecutor(8) as pool:
        for _ in range(10):  # rounds of concurrent requests, until both workers answered
            assert all(r.status_code == 200 for r in pool.map(lambda _: _classify(url), range(8)))
            if len(set(CLASSIFIED.findall(log.read_text()))) == 2:
                break
    pids = {int(pid) for _, pid in READY.findall(log.read_text())}
    assert {int(pid) for pid in CLASSIFIED.findall(log.read_text())} == pids


def test_metrics_from_any_worker_count_the_requests_of_all(workers: tuple[str, Path]) -> None:
    url, log = workers

    def classified() -> float:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        return metric(text, "imgcls_http_requests_total", route="/v1/classify", method="POST",
                      status="200")  # fmt: skip

    before = classified()
    with ThreadPoolExecutor(4) as pool:
        assert all(r.status_code == 200 for r in pool.map(lambda _: _classify(url), range(12)))
    # A request is counted just after its answer is sent.
    _wait_for(lambda: classified() == before + 12, timeout=10)
    answering = set(CLASSIFIED.findall(log.read_text()))
    assert len(answering) == 2  # both workers served requests the totals include
    for _ in range(6):  # scrapes land on either worker: each shows the same totals
        assert classified() == before + 12


def test_a_worker_that_dies_is_replaced_and_its_counts_stay(workers: tuple[str, Path]) -> None:
    url, log = workers
    counted = metric(httpx.get(f"{url}/metrics").text, "imgcls_http_requests_total",
                     route="/v1/classify", method="POST", status="200")  # fmt: skip
    index, pid = READY.findall(log.read_text())[0]
    os.kill(int(pid), signal.SIGKILL)
    _wait_for(lambda: len(READY.findall(log.read_text())) == 3)
    replacement = READY.findall(log.read_text())[2]
    assert replacement[0] == index and replacement[1] != pid
    assert f"worker {index} (pid {pid}) exited with code -9; starting another" in log.read_text()
    assert all(_classify(url).status_code == 200 for _ in range(4))
    text = httpx.get(f"{url}/metrics").text  # the dead worker's requests are still counted
    assert metric(text, "imgcls_http_requests_total", route="/v1/classify", method="POST",
                  status="200") >= counted + 4  # fmt: skip


def test_sigterm_lets_every_worker_finish_its_requests_then_exits_0(
    tiny_run: Path, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    release = threading.Event()
    started = threading.Semaphore(0)

    def slow_upload() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="cat.jpg"\r\n\r\n'
        started.release()
        release.wait(timeout=30)
        yield CAT + b"\r\n--b--\r\n"

    def send(url: str) -> httpx.Response:
        return httpx.post(f"{url}/v1/classify", content=slow_upload(), timeout=60,
                          headers={"content-type": "multipart/form-data; boundary=b"})  # fmt: skip

    with process_server("--model", str(tiny_run), "--workers", "2", log=log) as (process, url):
        _wait_for(lambda: len(READY.findall(log.read_text())) == 2)
        with ThreadPoolExecutor(6) as pool:
            responses = [pool.submit(send, url) for _ in range(6)]
            for _ in responses:
                assert started.acquire(timeout=30)
            time.sleep(0.5)  # the workers have the requests' headers: they are in flight
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            release.set()
            assert [r.result().status_code for r in responses] == [200] * 6
        assert process.wait(timeout=60) == 0
    text = log.read_text()
    for index, pid in READY.findall(text):
        assert f"worker {index} (pid {pid}) stopped (exit code 0)" in text
