"""The kept sample of served images (`serve --keep-images-mb`): under its quota, the
lowest margins and every "unknown" kept, written by the log's writer thread, read back
after a restart, and ranked by `imgcls select` as it lies."""

from __future__ import annotations

import asyncio
import csv
from contextlib import AsyncExitStack
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from helpers import write_photo_crops
from serve_utils import thread_server

from imgcls.data.label_files import read_unlabelled
from imgcls.errors import StartupError
from imgcls.select import select_images
from imgcls.serve.feedback import PredictionLog, sha256_hex
from imgcls.serve.keep import CONTROL_SHARE, LISTING, KeptSample
from imgcls.serve.log_writer import LogWriter
from imgcls.serve.metrics import Metrics
from imgcls.serve.service import ServeConfig, Service


def _images(count: int, seed: int = 0) -> list[bytes]:
    """Distinct PNGs of about the same size (noise, 24x24)."""
    rng = np.random.default_rng(seed)
    return [
        cv2.imencode(".png", rng.integers(0, 255, (24, 24, 3), np.uint8))[1].tobytes()
        for _ in range(count)
    ]


def _sample(tmp_path: Path, max_bytes: int, **options) -> tuple[KeptSample, LogWriter]:
    writer = LogWriter(PredictionLog(tmp_path / "log.db"))
    return KeptSample(tmp_path / "kept", max_bytes, writer.put_task, **options), writer


def _listing(root: Path) -> list[dict[str, str]]:
    with open(root / LISTING, newline="") as handle:
        return list(csv.DictReader(handle))


def _folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.iterdir() if p.name != LISTING)


def test_the_lowest_margins_and_every_unknown_stay_under_the_quota(tmp_path):
    images = _images(40)
    size = max(len(data) for data in images)
    sample, writer = _sample(tmp_path, max_bytes=int(10 * size / (1 - CONTROL_SHARE)),
                             control_rate=0.0)  # fmt: skip
    margins = np.random.default_rng(1).uniform(0.05, 0.95, len(images))
    unknown = {3, 17}
    for i, data in enumerate(images):
        sample.offer(data, sha256_hex(data), f"{i}.png", "cat", float(margins[i]), i in unknown)
    writer.close()

    root = tmp_path / "kept"
    rows = _listing(root)
    kept = {row["path"].split(".")[0] for row in rows}
    assert _folder_bytes(root) <= sample.max_bytes
    assert sorted(p.name for p in root.iterdir() if p.name != LISTING) == sorted(
        row["path"] for row in rows
    )
    assert {sha256_hex(images[i]) for i in unknown} <= kept
    assert all(row["label"] == "" for row in rows)
    answered = [i for i in range(len(images)) if i not in unknown]
    kept_margins = [margins[i] for i in answered if sha256_hex(images[i]) in kept]
    lowest = np.sort(margins[answered])
    assert len(kept_margins) >= 6
    assert max(kept_margins) <= lowest[len(kept_margins)]  # the lowest, give or take one


def test_the_random_control_keeps_its_share_oldest_out(tmp_path):
    images = _images(30, seed=2)
    sample, writer = _sample(tmp_path, max_bytes=30 * max(map(len, images)), control_rate=1.0)
    for i, data in enumerate(images):
        sample.offer(data, sha256_hex(data), f"{i}.png", "cat", 0.9, False)
    writer.close()

    rows = _listing(tmp_path / "kept")
    assert rows and all(row["reason"] == "random control" for row in rows)
    assert _folder_bytes(tmp_path / "kept") <= CONTROL_SHARE * sample.max_bytes
    assert sha256_hex(images[-1]) in {row["path"].split(".")[0] for row in rows}


def test_a_restart_reads_the_sample_back_and_keeps_each_image_once(tmp_path):
    images = _images(5, seed=3)
    sample, writer = _sample(tmp_path, max_bytes=1_000_000, control_rate=0.0)
    for data in images + images:  # each answered twice
        sample.offer(data, sha256_hex(data), "x.png", "cat", 0.2, False)
    writer.close()

    again, writer = _sample(tmp_path, max_bytes=1_000_000, control_rate=0.0)
    assert not again.offer(images[0], sha256_hex(images[0]), "x.png", "cat", 0.1, False)
    writer.close()
    assert len(_listing(tmp_path / "kept")) == 5
    assert again.used_bytes == sum(map(len, images))


def test_a_server_keeps_what_it_served_and_select_ranks_it(tiny_run, tmp_path):
    crops = write_photo_crops(tmp_path / "crops", per_class=8, size=32)
    uploads = [path.read_bytes() for path in sorted(crops.rglob("*.jpg"))]
    keep_dir = tmp_path / "kept"
    quota_mb = 6 * max(map(len, uploads)) / 1e6
    settings = {"log_db": str(tmp_path / "log.db"), "keep_dir": str(keep_dir)}
    with (
        thread_server(models=(str(tiny_run),), keep_images_mb=quota_mb, **settings) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        for i, data in enumerate(uploads):
            answer = client.post("/v1/classify", files={"file": (f"{i}.jpg", data)})
            assert answer.status_code == 200, answer.text

    assert 0 < _folder_bytes(keep_dir) <= quota_mb * 1e6
    listed = read_unlabelled(keep_dir / LISTING)
    assert len(listed) == len(_listing(keep_dir))
    chosen = select_images(keep_dir / LISTING, str(tiny_run), budget=2)
    assert len(chosen.paths) == 2 and chosen.considered == len(listed)


def test_keeping_images_without_the_log_is_refused_at_start(tiny_run, tmp_path):
    config = ServeConfig(models=(str(tiny_run),), keep_images_mb=1.0, log_db=None,
                         feedback_dir=str(tmp_path / "feedback"))  # fmt: skip

    async def start() -> None:
        async with AsyncExitStack() as stack:
            await Service(config, Metrics()).load(stack)

    with pytest.raises(StartupError, match="drop --no-log"):
        asyncio.run(start())
