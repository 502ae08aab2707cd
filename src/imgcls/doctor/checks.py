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

The rooms: `scan` (fingerprints), `duplicates` (exact and near groups), this module (the
checks and the `Report`), `report` (report.html) and `quarantine` (`quarantine`,
`restore`: flagged files out with a manifest JSON, and back).
The files checked are those training reads: the folders or the label file are read by
`imgcls.data.datasets`'s `scan_dataset` (split folders, or class folders only; the latter is
reported as one split named "all"; a label file's rows by their `split`, or "all"). A
label file's rows are checked first (missing files, empty labels, unknown splits: one
error listing them, or with `skip_missing` a warning), and its images are counted under
each of their labels.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from imgcls.data.datasets import UNSPLIT, DatasetLayout, scan_dataset
from imgcls.data.images import decode_workers
from imgcls.doctor.duplicates import exact_groups, near_groups
from imgcls.doctor.scan import Record, inspect_all
from imgcls.errors import DataError, DoctorError

__all__ = ["Report", "diagnose"]

TINY_SIDE = 32  # shorter side in pixels under which an image carries little for a 224 px model
MAX_ASPECT = 4.0  # longer / shorter side beyond which the centre crop loses most of the image
IMBALANCE_RATIO = 5.0  # largest / smallest class of a split beyond which we warn


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
    `label_delim`, `skip_missing`: see `imgcls.data.label_files`); `on_total(n)` is told the
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
    for record in inspect_all(layout, images, workers or decode_workers()):
        records.append(record)
        if progress is not None:
            progress(1)

    good = [r for r in records if r.error is None]
    classes = {split: dict.fromkeys(names, 0) for split, names in layout.classes.items()}
    for r in good:
        for label in r.labels:
            classes[r.split][label] += 1
    duplicates, representatives = exact_groups(good)
    near = near_groups(representatives, good)
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


def _image_warnings(records: list[Record]) -> list[dict[str, Any]]:
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
