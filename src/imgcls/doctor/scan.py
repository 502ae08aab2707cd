"""Reading a data set once: every file read, hashed, decoded (at reduced size for large
JPEGs) and reduced to a small fingerprint (`Record`: digests, perceptual hashes, an 8x8
colour thumbnail, size, gray or colour), in a thread pool, so memory does not grow with
image size."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import imagehash
import numpy as np
from PIL import Image

from imgcls.data.datasets import DatasetLayout
from imgcls.data.images import decode_image_bytes
from imgcls.errors import ImageError

__all__ = ["Record", "inspect_all"]

# Large JPEGs are decoded at 1/2..1/8 scale with the shorter side kept >= this: perceptual
# hashes work on 32x32 and 9x8 thumbnails, so more pixels only cost time.
HASH_MIN_SIDE = 128
GRAY_TOLERANCE = 8  # max channel difference (of 255) still counted as a gray pixel


@dataclass
class Record:
    """The fingerprint of one file: everything the checks need, no pixels."""

    path: Path
    rel: str  # path relative to DATA (or the label file's folder), as reported
    split: str
    labels: tuple[str, ...]
    error: str | None = None
    byte_digest: bytes = b""
    pixel_digest: bytes = b""
    phash: int = 0
    dhash: int = 0
    thumb: bytes = b""  # 8x8 RGB, area-averaged: the colour check of near-duplicates
    width: int = 0
    height: int = 0
    gray: bool = False


def inspect_all(
    layout: DatasetLayout, files: list[tuple[Path, str, tuple[str, ...]]], workers: int
) -> Iterator[Record]:
    """Records in file order, computed `workers` at a time; at most a few chunks in flight,
    so a million files never become a million pending futures."""
    chunk = 64 * workers
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(files), chunk):
            part = files[start : start + chunk]
            yield from pool.map(lambda f: _inspect(layout.relative(f[0]), *f), part)


def _inspect(rel: str, path: Path, split: str, labels: tuple[str, ...]) -> Record:
    record = Record(path, rel, split, labels)
    try:
        data = path.read_bytes()
    except OSError as exc:
        record.error = f"cannot read file ({exc.strerror or exc})"
        return record
    record.byte_digest = hashlib.blake2b(data, digest_size=16).digest()
    try:
        image = decode_image_bytes(data, name=record.rel, min_side=HASH_MIN_SIDE)
    except ImageError as exc:
        record.error = str(exc).removeprefix(f"{record.rel}: ")
        return record
    height, width = image.shape[:2]
    record.width, record.height = width, height
    digest = hashlib.blake2b(f"{width}x{height}".encode(), digest_size=16)
    digest.update(image.data)
    record.pixel_digest = digest.digest()
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    record.phash, record.dhash = _perceptual_hashes(gray)
    record.thumb = cv2.resize(image, (8, 8), interpolation=cv2.INTER_AREA).tobytes()
    step = max(1, min(height, width) // 64)  # about 64x64 samples decide gray or colour
    sample = image[::step, ::step].astype(np.int16)
    record.gray = bool(
        np.abs(sample[..., 0] - sample[..., 1]).max() <= GRAY_TOLERANCE
        and np.abs(sample[..., 1] - sample[..., 2]).max() <= GRAY_TOLERANCE
    )
    return record


def _perceptual_hashes(gray: np.ndarray) -> tuple[int, int]:
    """pHash and dHash (imagehash, 64 bits each) of a grayscale image, as integers."""
    pil = Image.fromarray(gray)
    return _to_int(imagehash.phash(pil).hash), _to_int(imagehash.dhash(pil).hash)


def _to_int(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits.ravel()).tobytes(), "big")
