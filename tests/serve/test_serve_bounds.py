"""`imgcls serve` bounded by design: slow or lying clients cost time and memory in
proportion to what they send, numbers in headers are ASCII digits, a 500 keeps its
exception text in the log, HEAD works where GET does, and large images queue for a
server-wide decode budget. Real servers (uvicorn as `imgcls serve` runs it), raw sockets
where a client must misbehave."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from serve_utils import CAT, process_server, thread_server

from imgcls.serve.budget import DecodeBudget
from imgcls.serve.service import Service


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _read_all(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long it took."""
    start = time.monotonic()
    sock.settimeout(limit_s)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - start


@pytest.fixture
def tiny(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The tiny run under a name a URL path can hold (a run is named as given)."""
    (tmp_path / "tiny").symlink_to(tiny_run)
    monkeypatch.chdir(tmp_path)
    return "tiny"


def test_a_unicode_digit_in_inference_header_content_length_is_400(tiny: str) -> None:
    with thread_server(models=(tiny,)) as url:
        response = httpx.post(
            f"{url}/v2/models/{tiny}/infer",
            content=b'{"inputs": []}',
            headers={"Inference-Header-Content-Length": "²".encode("latin-1")},
        )
    assert response.status_code == 400, response.text
    assert "Inference-Header-Content-Length" in response.json()["error"]


def test_a_500_answer_names_the_request_id_and_keeps_the_exception_in_the_log(
    tiny_run: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def fail(*args, **kwargs):
        raise RuntimeError("secret detail: /srv/models/private.onnx")

    monkeypatch.setattr(Service, "classify_and_log", fail)  # a fault inside the service
    with thread_server(models=(str(tiny_run),)) as url:
        response = httpx.post(
            f"{url}/v1/classify", content=CAT, headers={"content-type": "image/jpeg"}
        )
    assert response.status_code == 500
    request_id = response.headers["x-request-id"]
    message = response.json()["error"]["message"]
    assert "secret" not in response.text and "RuntimeError" not in response.text
    assert request_id in message
    assert any(
        request_id in record.getMessage()
        and record.exc_info
        and "secret" in str(record.exc_info[1])
        for record in caplog.records
    )


def test_head_answers_with_the_headers_of_get_and_no_body(tiny_run: Path) -> None:
    with thread_server(models=(str(tiny_run),)) as url:
        for path in ("/healthz", "/readyz", "/v1/models", "/v2/health/ready", "/"):
            got = httpx.get(f"{url}{path}")
            head = httpx.head(f"{url}{path}")
            assert head.status_code == got.status_code == 200, path
            assert head.content == b""
            assert head.headers["content-length"] == str(len(got.content)), path
            assert head.headers["content-type"] == got.headers["content-type"]
        assert httpx.head(f"{url}/v1/classify").status_code == 405  # POST only: as GET is


def test_a_connection_that_sends_no_complete_headers_is_closed_at_the_header_timeout(
    tiny_run: Path,
) -> None:
    with thread_server(models=(str(tiny_run),), header_timeout_s=0.5) as url:
        silent, trickling = _connect(url), _connect(url)
        trickling.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        for sock in (silent, trickling):
            data, waited = _read_all(sock, limit_s=5)
            assert data == b"" and waited < 3  # closed, long before the client would stop
            sock.close()
        # A keep-alive connection gets the same deadline for its next request's headers.
        sock = _connect(url)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        data, waited = _read_all(sock, limit_s=5)
        assert data == b"" and waited < 3
        sock.close()
        assert httpx.get(f"{url}/healthz").status_code == 200


def test_request_headers_over_the_cap_get_431(tiny_run: Path) -> None:
    with thread_server(models=(str(tiny_run),), max_header_bytes=8192) as url:
        response = httpx.get(f"{url}/healthz", headers={"X-Padding": "a" * 20_000})
        assert response.status_code == 431
        assert httpx.get(f"{url}/healthz", headers={"X-Padding": "a" * 2000}).status_code == 200


@pytest.mark.parametrize("path", ["/v1/classify", "/v2/models/{name}/infer"])
def test_a_body_that_stops_arriving_gets_408_and_the_connection_closes(
    tiny: str, path: str
) -> None:
    with thread_server(models=(tiny,), body_idle_timeout_s=0.5) as url:
        sock = _connect(url)
        sock.sendall(
            f"POST {path.format(name=tiny)} HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: image/jpeg\r\nContent-Length: 5000\r\n\r\n".encode()
            + CAT[:100]
        )
        data, waited = _read_all(sock, limit_s=10)
        sock.close()
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b"connection: close" in data.lower()
    assert b"stopped arriving (100 bytes received)" in data
    assert waited < 5


def test_a_trickling_body_gets_408_at_the_whole_body_timeout(tiny_run: Path) -> None:
    with thread_server(models=(str(tiny_run),), body_timeout_s=1.5) as url:
        sock = _connect(url)
        sock.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: image/jpeg\r\nContent-Length: 5000\r\n\r\n"
        )
        start = time.monotonic()
        response = b""
        sock.settimeout(0.2)
        for byte in CAT[:40]:  # 5 bytes/s: always progressing, never done
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            try:
                response += sock.recv(65536)
            except TimeoutError:
                continue
            if response:
                break
        sock.close()
    assert response.startswith(b"HTTP/1.1 408"), response[:200]
    assert time.monotonic() - start < 5


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_stalled_raw_bodies_that_declare_20_mb_cost_only_the_bytes_they_sent(
    tiny_run: Path,
) -> None:
    with process_server("--model", str(tiny_run)) as (process, url):
        httpx.post(f"{url}/v1/classify", content=CAT, headers={"content-type": "image/jpeg"})
        before = _rss_mb(process.pid)
        sockets = [_connect(url) for _ in range(8)]
        for sock in sockets:
            sock.sendall(
                b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                b"Content-Length: 19999999\r\n\r\n\xff\xd8"
            )
        time.sleep(1.5)  # the server has read all it was sent
        grown = _rss_mb(process.pid) - before
        for sock in sockets:
            sock.close()
        assert httpx.get(f"{url}/healthz").status_code == 200
    assert grown < 40, f"RSS grew {grown:.0f} MB for 16 bytes of bodies"  # sized: 160 MB


def test_the_decode_budget_never_holds_more_than_its_pixels_and_serves_in_order() -> None:
    budget = DecodeBudget(100)
    peak, order, lock = [0], [], threading.Lock()

    def decode(index: int, pixels: int) -> None:
        with budget.hold(pixels):
            with lock:
                peak[0] = max(peak[0], budget.used)
                order.append(index)
            time.sleep(0.05)

    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(decode, 0, 100)
        time.sleep(0.02)  # the others queue behind the image that holds it all
        jobs = []
        for index, pixels in enumerate((60, 60, 500, 10), 1):
            jobs.append(pool.submit(decode, index, pixels))
            time.sleep(0.02)  # each one queued before the next arrives
        for job in (first, *jobs):
            job.result(timeout=10)
    assert peak[0] <= 100
    assert order == [0, 1, 2, 3, 4]  # first come, first served; 500 takes it all, then fits
    assert budget.used == 0


def test_large_images_sent_at_once_queue_for_the_decode_budget_and_all_answer(
    tiny_run: Path,
) -> None:
    big = np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), np.uint8)
    png = cv2.imencode(".png", big)[1].tobytes()

    def post(_: int) -> httpx.Response:
        return httpx.post(
            f"{url}/v1/classify", content=png, headers={"content-type": "image/png"}, timeout=60
        )

    # A budget of one image: the four decode one after another.
    with (
        thread_server(models=(str(tiny_run),), decode_budget_pixels=1500 * 1500) as url,
        ThreadPoolExecutor(4) as pool,
    ):
        answers = list(pool.map(post, range(4)))
    assert [answer.status_code for answer in answers] == [200] * 4
