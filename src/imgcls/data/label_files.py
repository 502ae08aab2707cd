"""Label files: a data set described by a CSV or JSON Lines file instead of class folders.

    path,labels,split
    images/001.jpg,cat,train
    images/002.jpg,cat dog,val          several labels: spaces, or `label_delim`
    /data/photos/003.jpg,dog,test       absolute paths too

- `path`: the image, relative to the label file's folder, or absolute;
- `label` or `labels`: one or more class names in one cell (fastai's and Kaggle's
  convention); a JSON Lines row may also give a list, `{"path": ..., "labels": ["cat"]}`;
- `split` (optional): `train`, `val` or `test` on every row. Without the column the rows
  are split as `DATA/<class>/*` folders are (`--val-split`, seeded).

`read_label_file` reads and checks every row once: a missing file, a row without a label,
an unknown split, a path listed twice are collected and reported together in one
`LabelFileError` that names the first few rows; with `skip_missing`, rows whose file is
missing are set aside (and counted by the caller) instead. `imgcls.data.datasets.scan_dataset`
turns the rows into the same table the folder scanner builds, so training, evaluation,
features and the doctor read a label file as they read folders.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgcls.errors import DataError, LabelFileError

__all__ = [
    "LABEL_FILE_SUFFIXES",
    "LabelFile",
    "LabelRow",
    "is_label_file",
    "read_label_file",
    "read_unlabelled",
    "split_labels",
]

LABEL_FILE_SUFFIXES = (".csv", ".jsonl")
LABEL_COLUMNS = ("labels", "label")  # either names the labels column
SHOWN_PROBLEMS = 5  # bad rows named in the error message (all are in `problems`)
_UNREADABLE = "\x00"  # the key of a JSON Lines record that is no object: its reason


@dataclass(frozen=True)
class LabelRow:
    """One usable row: the image, its labels (first seen first, no repeats) and split."""

    row: int  # line number in the file, as an editor shows it (a CSV header is row 1)
    path: Path
    labels: tuple[str, ...]
    split: str | None  # None when the file has no split column


@dataclass
class LabelFile:
    """The rows of a label file, checked."""

    path: Path
    has_split: bool  # the file gives every row a split
    rows: list[LabelRow]
    missing: list[LabelRow] = field(default_factory=list)  # files not found (skip_missing)


def is_label_file(path: str | os.PathLike) -> bool:
    """Whether `path` names a label file (by extension; it may not exist)."""
    return Path(path).suffix.lower() in LABEL_FILE_SUFFIXES


def split_labels(cell: str, label_delim: str | None = None) -> tuple[str, ...]:
    """The labels in one cell: split on `label_delim` (None: any whitespace), stripped,
    empty ones dropped, each kept once in the order given."""
    parts = cell.split(label_delim) if label_delim else cell.split()
    return tuple(dict.fromkeys(part.strip() for part in parts if part.strip()))


def read_label_file(
    path: str | os.PathLike,
    split_names: Sequence[str] = ("train", "val", "test"),
    label_delim: str | None = None,
    skip_missing: bool = False,
) -> LabelFile:
    """Read and check every row of a `.csv` or `.jsonl` label file (see the module).

    Raises LabelFileError listing the bad rows (DataError when the file itself cannot be
    read); with `skip_missing`, rows whose image file does not exist go to `missing`."""
    path = Path(path)
    if not is_label_file(path):
        raise DataError(
            f"{path}: a label file ends in {' or '.join(LABEL_FILE_SUFFIXES)}; "
            "DATA is otherwise a folder"
        )
    if not path.is_file():
        raise DataError(f"{path}: no such label file")
    records = _jsonl_records(path) if path.suffix.lower() == ".jsonl" else _csv_records(path)
    problems: list[tuple[int, str]] = []
    rows: list[LabelRow] = []
    missing: list[LabelRow] = []
    seen: dict[Path, int] = {}
    has_split = None
    try:
        for number, record in records:
            if has_split is None and _UNREADABLE not in record:
                has_split = "split" in record
            row = _parse(number, record, path, label_delim, split_names, has_split, problems)
            if row is None:
                continue
            if row.path in seen:
                problems.append((number, f"{row.path} is also listed at row {seen[row.path]}"))
            elif not row.path.is_file():
                seen[row.path] = number
                if skip_missing:
                    missing.append(row)
                else:
                    problems.append((number, f"no such file {row.path}"))
            else:
                seen[row.path] = number
                rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the label file ({exc})") from None
    if problems:
        raise _bad_rows(path, problems, skip_missing)
    if not rows and not missing:
        raise LabelFileError(f"{path}: no rows (expected a header, then one row per image)")
    return LabelFile(path, bool(has_split), rows, missing)


def read_unlabelled(path: str | os.PathLike) -> list[Path]:
    """The images of a label file's rows with an empty label (the rows `imgcls select`
    ranks), in file order; rows with a label are left out. Raises LabelFileError naming
    the rows whose file is missing or that give no path."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such label file")
    records = _jsonl_records(path) if path.suffix.lower() == ".jsonl" else _csv_records(path)
    problems: list[tuple[int, str]] = []
    images: list[Path] = []
    try:
        for number, record in records:
            if _UNREADABLE in record:
                problems.append((number, record[_UNREADABLE]))
                continue
            if _labels(record, None):  # labelled (or not a string/list: not ours to judge)
                continue
            where = str(record.get("path") or "").strip()
            image = Path(os.path.normpath(path.parent / where))
            if not where:
                problems.append((number, "no path"))
            elif not image.is_file():
                problems.append((number, f"no such file {image}"))
            else:
                images.append(image)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the label file ({exc})") from None
    if problems:
        raise _bad_rows(path, problems, skip_missing=True)
    return images


def _csv_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, {column: cell}) of each data row; column names stripped, lower case."""
    with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's BOM
        reader = csv.reader(handle)
        header = [name.strip().lower() for name in next(reader, [])]
        _check_columns(path, header)
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue  # a blank line
            yield reader.line_num, dict(zip(header, cells, strict=False))


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line; a line that is not a JSON object
    yields {_UNREADABLE: reason}, which `_parse` reports."""
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                yield number, {_UNREADABLE: f"not JSON ({exc.args[0].split(':')[0]})"}
                continue
            if not isinstance(record, dict):
                yield number, {_UNREADABLE: "not a JSON object"}
                continue
            yield number, {str(key).strip().lower(): value for key, value in record.items()}


def _check_columns(path: Path, header: list[str]) -> None:
    columns = [name for name in header if name]
    if "path" not in columns or not any(name in columns for name in LABEL_COLUMNS):
        raise LabelFileError(
            f"{path}: needs a 'path' and a 'label' (or 'labels') column, found {columns} "
            "(optional: 'split')"
        )
    if all(name in columns for name in LABEL_COLUMNS):
        raise LabelFileError(f"{path}: has both 'label' and 'labels' columns; keep one")


def _parse(
    number: int,
    record: dict[str, Any],
    label_file: Path,
    label_delim: str | None,
    split_names: Sequence[str],
    has_split: bool,
    problems: list[tuple[int, str]],
) -> LabelRow | None:
    """The row, or None after adding what is wrong with it to `problems`."""
    if _UNREADABLE in record:  # a JSON Lines line that is no object
        problems.append((number, record[_UNREADABLE]))
        return None
    where = str(record.get("path") or "").strip()
    labels = _labels(record, label_delim)
    split = record.get("split")
    split = split.strip() if isinstance(split, str) else split
    reason = None
    if not where:
        reason = "no path"
    elif labels is None:
        reason = "labels must be a string or a list of strings"
    elif not labels:
        reason = f"{where}: no label"
    elif has_split != ("split" in record):
        reason = f"{where}: {'no' if has_split else 'a'} split, unlike the first row"
    elif has_split and split not in split_names:
        reason = f"{where}: split {split!r} is not {', '.join(split_names)}"
    if reason is not None:
        problems.append((number, reason))
        return None
    # Lexically normalised ("a/../b.png" is "b.png"), not resolved: links stay links, as
    # in the folder scanner.
    image = Path(os.path.normpath(label_file.parent / where))
    return LabelRow(number, image, labels, split if has_split else None)


def _labels(record: dict[str, Any], label_delim: str | None) -> tuple[str, ...] | None:
    """The row's labels: a cell split on the delimiter, or a JSON list of names (None when
    it is neither)."""
    value = next((record[name] for name in LABEL_COLUMNS if name in record), "")
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)  # a class named by a number
    if isinstance(value, str):
        return split_labels(value, label_delim)
    if isinstance(value, list) and all(isinstance(v, str | int) for v in value):
        return tuple(dict.fromkeys(str(v).strip() for v in value if str(v).strip()))
    return None


def _bad_rows(path: Path, problems: list[tuple[int, str]], skip_missing: bool) -> LabelFileError:
    shown = "; ".join(f"row {number}: {reason}" for number, reason in problems[:SHOWN_PROBLEMS])
    more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    missing_only = all(reason.startswith("no such file") for _, reason in problems)
    hint = (
        " (`skip_missing` skips rows whose file is missing)"
        if missing_only and not skip_missing
        else ""
    )
    return LabelFileError(
        f"{path}: {len(problems)} bad row(s): {shown}{more}{hint}",
        problems=tuple(problems),
        parameters=("skip_missing",) if hint else (),
    )
