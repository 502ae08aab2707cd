"""Duplicates among the fingerprints of `scan`: identical pixels (exact groups) and the
same picture by perceptual hash, confirmed on colour thumbnails (near-duplicate groups),
found by a blocked, vectorised Hamming search (no Python pair loop)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from imgcls.doctor.scan import Record

__all__ = ["exact_groups", "near_duplicate_pairs", "near_groups"]

# Near-duplicate rule: pHash within 6 bits AND dHash within 12 (dHash is looser: its bits
# are unstable on flat areas), then 8x8 colour thumbnails within 8/255 (both hashes see
# only gray structure). The measurements that chose them: docs/doctor.md.
PHASH_MAX_DISTANCE = 6
DHASH_MAX_DISTANCE = 12
THUMB_MAX_DIFFERENCE = 8.0
_BLOCK = 1024  # rows x columns of one Hamming tile: 1024 x 8192 uint64 = 64 MB at most
_COLUMNS = 8192


def _group_info(members: list[Record]) -> dict[str, Any]:
    members = sorted(members, key=lambda r: r.rel)
    return {
        "paths": [r.rel for r in members],
        "classes": sorted({label for r in members for label in r.labels}),
        "splits": sorted({r.split for r in members}),
        "cross_class": len({frozenset(r.labels) for r in members}) > 1,
    }


def exact_groups(records: list[Record]) -> tuple[list[dict[str, Any]], list[Record]]:
    """Groups of identical pixels, and one representative per distinct picture."""
    by_pixels: dict[bytes, list[Record]] = defaultdict(list)
    for r in records:
        by_pixels[r.pixel_digest].append(r)
    groups = []
    for members in by_pixels.values():
        if len(members) > 1:
            kind = "bytes" if len({r.byte_digest for r in members}) == 1 else "pixels"
            groups.append({"kind": kind, **_group_info(members)})
    groups.sort(key=lambda g: g["paths"][0])
    return groups, [members[0] for members in by_pixels.values()]


def near_groups(representatives: list[Record], records: list[Record]) -> list[dict[str, Any]]:
    """Connected groups of near-duplicate pictures (exact copies of each ride along)."""
    phash = np.array([r.phash for r in representatives], dtype=np.uint64)
    dhash = np.array([r.dhash for r in representatives], dtype=np.uint64)
    pairs = near_duplicate_pairs(phash, dhash, PHASH_MAX_DISTANCE, DHASH_MAX_DISTANCE)
    if not pairs:
        return []
    first, second, distance = (np.array(column) for column in zip(*pairs, strict=True))
    thumbs = np.frombuffer(b"".join(r.thumb for r in representatives), np.uint8)
    thumbs = thumbs.reshape(len(representatives), -1).astype(np.int16)
    same = np.abs(thumbs[first] - thumbs[second]).mean(axis=1) <= THUMB_MAX_DIFFERENCE
    first, second, distance = first[same], second[same], distance[same]
    n = len(representatives)
    graph = coo_array((np.ones(len(first)), (first, second)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    max_distance = np.zeros(n, int)
    np.maximum.at(max_distance, component[first], distance)
    members: dict[int, list[int]] = defaultdict(list)
    for i in np.unique(np.concatenate([first, second])).tolist():
        members[int(component[i])].append(i)
    by_pixels: dict[bytes, list[Record]] = defaultdict(list)
    for r in records:
        by_pixels[r.pixel_digest].append(r)
    groups = []
    for label, linked in members.items():
        files = [r for i in linked for r in by_pixels[representatives[i].pixel_digest]]
        groups.append({"max_distance": int(max_distance[label]), **_group_info(files)})
    groups.sort(key=lambda g: g["paths"][0])
    return groups


def near_duplicate_pairs(
    phash: np.ndarray, dhash: np.ndarray, max_phash: int, max_dhash: int
) -> list[tuple[int, int, int]]:
    """(i, j, pHash distance) for i < j with both Hamming distances within the limits.

    All pairs are compared, but tile by tile in numpy (XOR + popcount on uint64), so
    100,000 hashes take seconds; memory per tile is bounded by _BLOCK x _COLUMNS.
    """
    n = len(phash)
    found: list[tuple[int, int, int]] = []
    for row in range(0, n, _BLOCK):
        rows = slice(row, min(row + _BLOCK, n))
        for col in range(row, n, _COLUMNS):
            cols = slice(col, min(col + _COLUMNS, n))
            p = np.bitwise_count(phash[rows, None] ^ phash[None, cols])
            i, j = np.nonzero(p <= max_phash)
            i, j = i + row, j + col
            keep = j > i
            i, j = i[keep], j[keep]
            if not len(i):
                continue
            d = np.bitwise_count(dhash[i] ^ dhash[j])
            keep = d <= max_dhash
            found += zip(
                i[keep].tolist(),
                j[keep].tolist(),
                p[i[keep] - row, j[keep] - col].tolist(),
                strict=True,
            )
    return found
