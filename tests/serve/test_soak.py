"""Soak: thousands of mixed good and bad requests, sent concurrently to a real `imgcls
serve` process. Every good one gets the right answer, every bad one a 4xx JSON error; the
server's memory stays flat and it leaks no file descriptors.

IMGCLS_SOAK_REQUESTS sets the count (default 3,000: about 15 s of traffic on two busy cores)."""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from serve_utils import CAT, bomb_png, process_server

from imgcls import ImageClassifier

pytestmark = [
    pytest.mark.soak,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc"),
]

REQUESTS = int(os.environ.get("IMGCLS_SOAK_REQUESTS", "3000"))
WARM_UP = 200
CLIENTS = 8
RSS_GROWTH_LIMIT_MB = 40
MAX_UPLOAD_MB = 1


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc status")


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _good_images(run: Path) -> list[tuple[bytes, str]]:
    """JPEG crops of the sample photos with the run's own top-1, kept when that top-1 is
    clear (a near tie could flip between batch sizes)."""
    classifier = ImageClassifier(str(run))
    rng = np.random.default_rng(1)
    images = []
    for name in ("cat", "espresso", "rocket"):
        photo = cv2.imread(str(Path(__file__).parents[2] / "samples" / f"{name}.jpg"))
        for _ in range(6):
            side = int(min(photo.shape[:2]) * rng.uniform(0.4, 0.9))
            y = int(rng.integers(0, photo.shape[0] - side))
            x = int(rng.integers(0, photo.shape[1] - side))
            crop = cv2.resize(photo[y : y + side, x : x + side], (64, 64))
            data = cv2.imencode(".jpg", crop)[1].tobytes()
            first, second = classifier.classify_image(data, top_k=2)
            if first.score - second.score > 0.05:
                images.append((data, first.label))
    assert len(images) >= 6, "the tiny run has too few confident predictions to check"
    return images


def _requests(good: list[tuple[bytes, str]]) -> list[tuple[str, dict, object]]:
    """(kind, httpx.post keyword arguments, expected): a good image's label, or a status."""
    oversized = b"\xff\xd8\xff" + b"\0" * (MAX_UPLOAD_MB * 1_000_000 + 1000)
    photo = [("file", ("a.jpg", good[0][0]))]
    bad = [
        ("text", {"files": [("file", ("notes.jpg", b"just text, not a picture"))]}, 422),
        ("truncated", {"files": [("file", ("cut.jpg", CAT[: len(CAT) // 3]))]}, 422),
        ("empty", {"files": [("file", ("empty.jpg", b""))]}, 422),
        ("huge_dimensions", {"files": [("file", ("bomb.png", bomb_png()))]}, 422),
        ("wrong_field", {"files": [("image", ("cat.jpg", good[0][0]))]}, 400),
        ("bad_top_k", {"files": photo, "params": {"top_k": "x"}}, 400),
        ("zero_top_k", {"files": photo, "params": {"top_k": 0}}, 400),
        ("unknown_model", {"files": photo, "params": {"model": "no"}}, 404),
        ("text_body", {"content": good[0][0], "headers": {"content-type": "text/plain"}}, 400),
        ("over_the_cap", {"files": [("file", ("big.jpg", oversized))]}, 413),
    ]  # fmt: skip
    mixed = []
    for i in range(REQUESTS):
        if i % 2:
            data, label = good[(i // 2) % len(good)]
            mixed.append(("good", {"files": [("file", (f"{i}.jpg", data))]}, label))
        else:
            mixed.append(bad[(i // 2) % len(bad)])
    return mixed


def _send(client: httpx.Client, request: tuple[str, dict, object]) -> str | None:
    """None when the answer is right, else what was wrong."""
    kind, kwargs, expected = request
    response = client.post("/v1/classify", **kwargs)
    if kind == "good":
        if response.status_code != 200:
            return f"good image: {response.status_code} {response.text[:200]}"
        top = response.json()["results"][0]["predictions"][0]["label"]
        return None if top == expected else f"good image: top-1 {top!r}, expected {expected!r}"
    if response.status_code != expected:
        return f"{kind}: {response.status_code}, expected {expected}: {response.text[:200]}"
    error = response.json().get("error", {})
    return None if error.get("type") and error.get("message") else f"{kind}: no JSON error"


def _run(url: str, requests: list) -> list[str]:
    with (
        httpx.Client(base_url=url, timeout=120) as client,
        ThreadPoolExecutor(CLIENTS) as pool,
    ):
        return [problem for problem in pool.map(lambda r: _send(client, r), requests) if problem]


def _settled_fds(pid: int, baseline: int, timeout_s: float = 10.0) -> int:
    """The server's open descriptors once closed connections are gone (up to `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while (count := _open_fds(pid)) > baseline and time.monotonic() < deadline:
        time.sleep(0.2)
    return count


def test_mixed_traffic_is_answered_right_without_leaking_memory_or_descriptors(tiny_run, tmp_path):
    good = _good_images(tiny_run)
    requests = _requests(good)
    args = ("--model", str(tiny_run), "--max-upload-mb", str(MAX_UPLOAD_MB), "--max-wait-ms", "2")
    with process_server(*args, log=tmp_path / "server.log") as (process, url):
        assert not _run(url, requests[:WARM_UP])  # allocators and caches reach steady state
        fds_before = _settled_fds(process.pid, 0, timeout_s=2)
        rss_before = _rss_mb(process.pid)

        started = time.monotonic()
        problems = _run(url, requests)
        seconds = time.monotonic() - started

        rss_after = _rss_mb(process.pid)
        fds_after = _settled_fds(process.pid, fds_before)
        assert httpx.get(f"{url}/healthz").status_code == 200
        metrics = httpx.get(f"{url}/metrics").text

    kinds = Counter(kind for kind, _, _ in requests)
    print(
        f"\nsoak: {len(requests)} requests ({kinds['good']} good) in {seconds:.1f}s, "
        f"{len(problems)} wrong; server RSS {rss_before:.1f} -> {rss_after:.1f} MB "
        f"({rss_after - rss_before:+.1f} MB); open fds {fds_before} -> {fds_after}"
    )
    assert not problems, f"{len(problems)} wrong answers, e.g. {problems[:5]}"
    assert 'status="500"' not in metrics
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_MB
    assert fds_after <= fds_before
