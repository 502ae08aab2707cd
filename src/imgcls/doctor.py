"""Data set health: what is wrong with an image-folder data set before it wastes a training run.

`diagnose(DATA)` streams every file once through a thread pool — read, hash the bytes,
decode (at reduced size for large JPEGs), hash the pixels and two perceptual hashes — and
keeps only those small fingerprints, so memory does not grow with image size. Then:

- corrupt: files with an image extension that do not decode (with the reason);
- duplicates: files with identical decoded pixels (kind "bytes" when the files are
  byte-identical too), within or across classes (across classes: a label conflict);
- near_duplicates: different pixels, same picture by perceptual hash (a resized or
  recompressed copy), found by a blocked, vectorised Hamming search (no Python pair loop)
  and confirmed on tiny colour thumbnails;
- leaks: any duplicate or near-duplicate group spanning more than one split;
- warnings: class imbalance, empty or missing classes, tiny images, extreme aspect ratios,
  grayscale mixed with colour, non-image files in class folders.

`quarantine` moves flagged files out with a manifest JSON; `restore` moves them back.
The files checked are those training reads: the folders or the label file are read by
`imgcls.data`'s `scan_dataset` (split folders, or class folders only; the latter is
reported as one split named "all"; a label file's rows by their `split`, or "all"). A
label file's rows are checked first (missing files, empty labels, unknown splits: one
error listing them, or with `skip_missing` a warning), and its images are counted under
each of their labels.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from imgcls.checkpoint import make_dir, write_json, write_text
from imgcls.data import UNSPLIT, DataError, DatasetLayout, scan_dataset
from imgcls.errors import DoctorError
from imgcls.gallery import Thumbnails
from imgcls.images import ImageError, decode_image_bytes

__all__ = [
    "DoctorError",
    "Report",
    "diagnose",
    "paths_from_csv",
    "quarantine",
    "restore",
    "write_html_report",
]

MANIFEST = "manifest.json"

# Near-duplicate rule: a pair is the same picture when its 64-bit pHash differs in at most
# 6 bits AND its dHash in at most 12 (docs/doctor.md has the measurements). Resized
# (1/2, 1/4, 96 px), recompressed (JPEG quality 30-75) and brightened copies of the sample
# photos differ by 0-2 bits in both; a resized copy of a flat synthetic picture reached 11
# in dHash (flat areas make its bits unstable), hence the looser dHash limit. Crops of
# different photos differ by 18+ bits; of 2,340 pairs of distinct, overlapping crops of the
# same photo, 2 pass the rule; of 1.6 million pairs of distinct synthetic pictures, none
# (with pHash <= 8 AND dHash <= 8, one did). pHash is the robust signal; dHash removes
# the chance pHash collisions of simple pictures.
PHASH_MAX_DISTANCE = 6
DHASH_MAX_DISTANCE = 12
# Both hashes see only gray structure: among 20,000 flat synthetic pictures (gradients and
# a few shapes, benchmarks/doctor_scale.py) 129 pairs of different pictures - often in
# different colours - passed them. So each candidate pair is also checked on 8x8 colour
# thumbnails: mean absolute difference at most 8 (of 255). Resized and recompressed
# copies measured 0.2-4; 128 of those 129 pairs measured 9-80. A recoloured or brightened
# (+20: 20) copy is then not a near-duplicate; that is an edit, not a copy.
THUMB_MAX_DIFFERENCE = 8.0
# Large JPEGs are decoded at 1/2..1/8 scale with the shorter side kept >= this: perceptual
# hashes work on 32x32 and 9x8 thumbnails, so more pixels only cost time.
HASH_MIN_SIDE = 128
TINY_SIDE = 32  # shorter side in pixels under which an image carries little for a 224 px model
MAX_ASPECT = 4.0  # longer / shorter side beyond which the centre crop loses most of the image
IMBALANCE_RATIO = 5.0  # largest / smallest class of a split beyond which we warn
GRAY_TOLERANCE = 8  # max channel difference (of 255) still counted as a gray pixel
THUMBNAIL_SIDE = 128  # pixels, the longer side of a report.html thumbnail
_BLOCK = 1024  # rows x columns of one Hamming tile: 1024 x 8192 uint64 = 64 MB at most
_COLUMNS = 8192


@dataclass
class _Record:
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


@dataclass
class Report:
    """What `imgcls doctor --json` prints (see `to_dict`)."""

    root: str  # the data folder, or the label file's folder
    layout: str  # "splits" or "classes"
    num_files: int
    num_images: int
    classes: dict[str, dict[str, int]]
    corrupt: list[dict[str, str]]
    duplicates: list[dict[str, Any]]
    near_duplicates: list[dict[str, Any]]
    leaks: list[dict[str, Any]]
    warnings: list[dict[str, Any]]
    non_images: list[str]
    seconds: float
    label_file: str | None = None  # the CSV / JSON Lines file the rows came from
    multi_label: bool = False  # some image has several labels

    @property
    def images_per_s(self) -> float:
        return self.num_files / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "layout": self.layout,
            "label_file": self.label_file,
            "multi_label": self.multi_label,
            "num_files": self.num_files,
            "num_images": self.num_images,
            "classes": self.classes,
            # Paths, as INTERFACE.md promises; the reasons beside them, by path.
            "corrupt": [c["path"] for c in self.corrupt],
            "corrupt_reasons": {c["path"]: c["reason"] for c in self.corrupt},
            "duplicates": self.duplicates,
            "near_duplicates": self.near_duplicates,
            "leaks": self.leaks,
            "warnings": self.warnings,
            "non_images": self.non_images,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 1),
        }

    def flagged(self) -> list[tuple[str, str]]:
        """(relative path, reason) of the files `--quarantine` moves: every corrupt file,
        and all but one member of each duplicate group and of each leaking group (the one
        kept is a training image when the group has one, so val/test stay clean)."""
        moves = {c["path"]: f"corrupt: {c['reason']}" for c in self.corrupt}
        groups = [("duplicate", g) for g in self.duplicates] + [
            ("near-duplicate leak", g) for g in self.leaks if g["kind"] == "near_duplicate"
        ]
        for what, group in groups:
            keep = next((p for p in group["paths"] if p.startswith("train/")), group["paths"][0])
            for path in group["paths"]:
                if path != keep:
                    moves.setdefault(path, f"{what} of {keep}")
        return sorted(moves.items())


def diagnose(
    root: str | os.PathLike,
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    label_delim: str | None = None,
    skip_missing: bool = False,
) -> Report:
    """Check every file under `root` (a data folder), or listed in `root` (a label file;
    `label_delim`, `skip_missing`: see `imgcls.label_files`); `on_total(n)` is told the
    file count, then `progress(1)` is called per file."""
    started = time.perf_counter()
    try:
        layout = scan_dataset(root, label_delim=label_delim, skip_missing=skip_missing)
    except DataError as exc:
        raise DoctorError(str(exc), parameters=exc.parameters) from None
    root = layout.root
    if not any(layout.classes.values()):
        raise DoctorError(
            f"{root}: no class folders (expected DATA/<class>/* or DATA/train/<class>/*)"
        )
    images = [
        (path, split, labels) for split, files in layout.splits.items() for path, labels in files
    ]
    if on_total is not None:
        on_total(len(images))
    records = []
    for record in _inspect_all(layout, images, workers or min(8, os.cpu_count() or 1)):
        records.append(record)
        if progress is not None:
            progress(1)

    good = [r for r in records if r.error is None]
    classes = {split: dict.fromkeys(names, 0) for split, names in layout.classes.items()}
    for r in good:
        for label in r.labels:
            classes[r.split][label] += 1
    duplicates, representatives = _exact_groups(good)
    near = _near_groups(representatives, good)
    leaks = [
        {"kind": kind, **group}
        for kind, groups in (("duplicate", duplicates), ("near_duplicate", near))
        for group in groups
        if len(group["splits"]) > 1
    ]
    warnings = _layout_warnings(layout)
    warnings += _class_warnings(classes)
    warnings += _image_warnings(good)
    return Report(
        root=str(root),
        layout=layout.kind,
        num_files=len(records),
        num_images=len(good),
        classes=classes,
        corrupt=[{"path": r.rel, "reason": r.error} for r in records if r.error is not None],
        duplicates=duplicates,
        near_duplicates=near,
        leaks=leaks,
        warnings=warnings,
        non_images=sorted(layout.relative(p) for p in layout.non_images),
        seconds=time.perf_counter() - started,
        label_file=None if layout.label_file is None else str(layout.label_file),
        multi_label=layout.multi_label,
    )


def _layout_warnings(layout: DatasetLayout) -> list[dict[str, Any]]:
    """What training will not read: folders beside train/ val/ test/, files that are not
    images, files beside the class folders, listed files that are missing."""
    warnings = []
    if layout.skipped:
        warnings.append(
            _warning(
                "missing_files",
                f"{len(layout.skipped)} file(s) listed in {layout.label_file} are missing "
                "(training skips them with --skip-missing)",
                (layout.relative(p) for p, _ in layout.skipped),
            )
        )
    if layout.ignored:
        others = [p.name for p in layout.ignored]
        warnings.append(
            _warning("ignored_folders", f"folders that are not train/val/test: {others}", [])
        )
    if layout.non_images:
        warnings.append(
            _warning(
                "non_image_files",
                f"{len(layout.non_images)} file(s) in class folders are not images by "
                "extension (training skips them)",
                (layout.relative(p) for p in layout.non_images),
            )
        )
    if layout.stray:
        warnings.append(
            _warning(
                "stray_files",
                f"{len(layout.stray)} file(s) outside class folders",
                (layout.relative(p) for p in layout.stray),
            )
        )
    return warnings


def _inspect_all(
    layout: DatasetLayout, files: list[tuple[Path, str, tuple[str, ...]]], workers: int
) -> Iterator[_Record]:
    """Records in file order, computed `workers` at a time; at most a few chunks in flight,
    so a million files never become a million pending futures."""
    chunk = 64 * workers
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(files), chunk):
            part = files[start : start + chunk]
            yield from pool.map(lambda f: _inspect(layout.relative(f[0]), *f), part)


def _inspect(rel: str, path: Path, split: str, labels: tuple[str, ...]) -> _Record:
    record = _Record(path, rel, split, labels)
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
    import imagehash
    from PIL import Image

    pil = Image.fromarray(gray)
    return _to_int(imagehash.phash(pil).hash), _to_int(imagehash.dhash(pil).hash)


def _to_int(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits.ravel()).tobytes(), "big")


def _group_info(members: list[_Record]) -> dict[str, Any]:
    members = sorted(members, key=lambda r: r.rel)
    return {
        "paths": [r.rel for r in members],
        "classes": sorted({label for r in members for label in r.labels}),
        "splits": sorted({r.split for r in members}),
        "cross_class": len({frozenset(r.labels) for r in members}) > 1,
    }


def _exact_groups(records: list[_Record]) -> tuple[list[dict[str, Any]], list[_Record]]:
    """Groups of identical pixels, and one representative per distinct picture."""
    by_pixels: dict[bytes, list[_Record]] = defaultdict(list)
    for r in records:
        by_pixels[r.pixel_digest].append(r)
    groups = []
    for members in by_pixels.values():
        if len(members) > 1:
            kind = "bytes" if len({r.byte_digest for r in members}) == 1 else "pixels"
            groups.append({"kind": kind, **_group_info(members)})
    groups.sort(key=lambda g: g["paths"][0])
    return groups, [members[0] for members in by_pixels.values()]


def _near_groups(representatives: list[_Record], records: list[_Record]) -> list[dict[str, Any]]:
    """Connected groups of near-duplicate pictures (exact copies of each ride along)."""
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components

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
    by_pixels: dict[bytes, list[_Record]] = defaultdict(list)
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


def _warning(kind: str, message: str, paths: Iterable[str]) -> dict[str, Any]:
    return {"kind": kind, "message": message, "paths": sorted(paths)}


def _class_warnings(classes: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    warnings = []
    all_classes = sorted({label for counts in classes.values() for label in counts})
    for split, counts in classes.items():
        empty = sorted(label for label, n in counts.items() if n == 0)
        if empty:
            warnings.append(
                _warning(
                    "empty_classes",
                    f"{split}: class(es) with no usable image: {empty}",
                    [f"{split}/{label}" if split != UNSPLIT else label for label in empty],
                )
            )
        missing = [label for label in all_classes if label not in counts]
        if missing:
            warnings.append(
                _warning("missing_classes", f"{split}: no folder (or row) for {missing}", [])
            )
        used = {label: n for label, n in counts.items() if n > 0}
        if len(used) >= 2:
            largest, smallest = max(used, key=used.get), min(used, key=used.get)
            if used[largest] > IMBALANCE_RATIO * used[smallest]:
                warnings.append(
                    _warning(
                        "imbalance",
                        f"{split}: classes are imbalanced, {largest!r} has {used[largest]} "
                        f"images and {smallest!r} {used[smallest]} (over {IMBALANCE_RATIO:g}:1; "
                        "consider `imgcls train --balance`)",
                        [],
                    )
                )
    return warnings


def _image_warnings(records: list[_Record]) -> list[dict[str, Any]]:
    warnings = []
    tiny = [r.rel for r in records if min(r.width, r.height) < TINY_SIDE]
    if tiny:
        warnings.append(
            _warning("tiny_images", f"{len(tiny)} image(s) under {TINY_SIDE} px on a side", tiny)
        )
    extreme = [
        r.rel for r in records if max(r.width, r.height) > MAX_ASPECT * min(r.width, r.height)
    ]
    if extreme:
        warnings.append(
            _warning(
                "extreme_aspect",
                f"{len(extreme)} image(s) with an aspect ratio over {MAX_ASPECT:g}:1 "
                "(a centre crop keeps little of them)",
                extreme,
            )
        )
    gray = [r.rel for r in records if r.gray]
    if gray and len(gray) < len(records):
        minority_gray = len(gray) * 2 <= len(records)
        paths = gray if minority_gray else [r.rel for r in records if not r.gray]
        warnings.append(
            _warning(
                "grayscale_mixed",
                f"{len(gray)} grayscale and {len(records) - len(gray)} colour images mixed; "
                f"the {'grayscale' if minority_gray else 'colour'} ones are listed",
                paths,
            )
        )
    return warnings


def _resolve(root: Path, listed: str, csv_path: Path) -> Path:
    """A path from a CSV: absolute, relative to DATA, or relative to the working directory."""
    candidates = [Path(listed)] if Path(listed).is_absolute() else [root / listed, Path(listed)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DoctorError(f"{csv_path}: listed file {listed!r} does not exist under {root}")


def paths_from_csv(root: str | os.PathLike, csv_path: str | os.PathLike) -> list[str]:
    """The files (relative to `root`) named in the `path` column of a CSV."""
    root, csv_path = Path(root), Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if "path" not in (reader.fieldnames or []):
                raise DoctorError(
                    f"{csv_path}: no 'path' column (columns: {reader.fieldnames or []})"
                )
            listed = [row["path"] for row in reader if row.get("path")]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DoctorError(f"{csv_path}: cannot read the CSV ({exc})") from None
    rels = []
    for item in listed:
        path = _resolve(root, item, csv_path).resolve()
        if not path.is_relative_to(root.resolve()):
            raise DoctorError(f"{csv_path}: {item!r} is outside the data set {root}")
        rels.append(path.relative_to(root.resolve()).as_posix())
    return sorted(set(rels))


def quarantine(
    root: str | os.PathLike, moves: list[tuple[str, str]], directory: str | os.PathLike
) -> Path:
    """Move each (relative path, reason) from `root` into `directory` (same relative path)
    and return the manifest that `restore` undoes. The manifest is written before the first
    move, so an interrupted quarantine can still be restored."""
    if Path(root).is_file():
        raise DoctorError(
            f"{root}: --quarantine moves files out of a data folder; for a label file, "
            "delete the flagged rows instead (report.json lists their paths)"
        )
    root, directory = Path(root).resolve(), Path(directory).resolve()
    if directory == root or directory.is_relative_to(root):
        raise DoctorError(f"{directory}: the quarantine folder must be outside the data set")
    make_dir(directory)
    manifest = directory / MANIFEST
    entries = _read_manifest(manifest)["moves"] if manifest.exists() else []
    taken = {e["to"] for e in entries}
    new = []
    for rel, reason in moves:
        target = directory / rel
        while str(target) in taken or target.exists():  # a second quarantine of the same name
            target = target.with_name(f"{target.stem}~{target.suffix}")
        taken.add(str(target))
        new.append({"from": str(root / rel), "to": str(target), "reason": reason})
    write_json(manifest, {"data": str(root), "moves": entries + new})
    for entry in new:
        Path(entry["to"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(entry["from"], entry["to"])
    return manifest


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
        moves = manifest.get("moves")
        if not isinstance(moves, list) or not all(
            isinstance(m, dict) and isinstance(m.get("from"), str) and isinstance(m.get("to"), str)
            for m in moves
        ):
            raise ValueError("'moves' must be a list of {from, to} objects")
    except FileNotFoundError:
        raise DoctorError(f"{path}: no such manifest") from None
    except (OSError, ValueError) as exc:
        raise DoctorError(f"{path}: not a doctor quarantine manifest ({exc})") from None
    return manifest


def restore(manifest_path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Move every quarantined file back; returns (restored, problems). Entries that could
    not be restored stay in the manifest; it is removed when none is left."""
    manifest_path = Path(manifest_path)
    manifest = _read_manifest(manifest_path)
    restored, problems, left = [], [], []
    for entry in manifest["moves"]:
        source, target = Path(entry["to"]), Path(entry["from"])
        if source.exists() and target.exists():
            problems.append(f"{target}: already exists, {source} left in quarantine")
            left.append(entry)
        elif source.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
            restored.append(str(target))
        elif target.exists():  # moved back already (or the move never happened)
            restored.append(str(target))
        else:
            problems.append(f"{source}: missing from the quarantine, cannot restore {target}")
            left.append(entry)
    if left:
        write_json(manifest_path, {**manifest, "moves": left})
    else:
        manifest_path.unlink()
    return restored, problems


def write_html_report(report: Report, out: str | os.PathLike, max_groups: int = 200) -> Path:
    """`out/report.html` (with thumbnails in `out/thumbs/`) and `out/report.json`."""
    out = make_dir(out)
    write_json(out / "report.json", report.to_dict())
    root = Path(report.root)
    thumbnails = Thumbnails(THUMBNAIL_SIDE, out / "thumbs")

    def figure(rel: str) -> str:
        return thumbnails.figure(root / rel, html.escape(rel))

    def groups_html(title: str, groups: list[dict[str, Any]]) -> str:
        if not groups:
            return f"<h2>{title}: none</h2>"
        parts = [f"<h2>{title} ({len(groups)})</h2>"]
        for g in groups[:max_groups]:
            note = " — <b>label conflict</b>" if g["cross_class"] else ""
            extra = f", distance {g['max_distance']}" if "max_distance" in g else ""
            parts.append(
                f"<p>splits {html.escape(', '.join(g['splits']))}; classes "
                f"{html.escape(', '.join(g['classes']))}{extra}{note}</p>"
                f'<div class="row">{"".join(figure(p) for p in g["paths"])}</div>'
            )
        if len(groups) > max_groups:
            parts.append(f"<p>… and {len(groups) - max_groups} more in report.json</p>")
        return "\n".join(parts)

    counts = "".join(
        f"<tr><td>{html.escape(split)}</td><td>{html.escape(label)}</td><td>{n}</td></tr>"
        for split, by_class in report.classes.items()
        for label, n in by_class.items()
    )
    corrupt = "".join(
        f"<li>{html.escape(c['path'])}: {html.escape(c['reason'])}</li>" for c in report.corrupt
    )
    warnings = "".join(
        f"<li>{html.escape(w['message'])}<br><small>{html.escape(', '.join(w['paths'][:20]))}"
        f"{' …' if len(w['paths']) > 20 else ''}</small></li>"
        for w in report.warnings
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>imgcls doctor: {html.escape(report.root)}</title>
<style>body{{font-family:sans-serif;margin:2em}} .row{{display:flex;flex-wrap:wrap;gap:8px}}
figure{{margin:0;width:140px;font-size:11px;word-break:break-all}}
img{{max-width:{THUMBNAIL_SIDE}px}} td{{padding:0 1em}}</style></head><body>
<h1>imgcls doctor: {html.escape(report.root)}</h1>
<p>{report.num_files} image files, {report.num_images} decodable, layout {report.layout},
{report.images_per_s:.0f} images/s.</p>
<h2>Classes</h2><table><tr><th>split</th><th>class</th><th>images</th></tr>{counts}</table>
<h2>Corrupt ({len(report.corrupt)})</h2><ul>{corrupt}</ul>
<h2>Warnings ({len(report.warnings)})</h2><ul>{warnings}</ul>
{groups_html("Leaks", report.leaks)}
{groups_html("Duplicates", report.duplicates)}
{groups_html("Near-duplicates", report.near_duplicates)}
</body></html>
"""
    page_path = out / "report.html"
    write_text(page_path, page)
    return page_path
