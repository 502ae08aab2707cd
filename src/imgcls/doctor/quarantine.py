"""Moving flagged files out of a data folder (`quarantine`, with a manifest written
first) and back (`restore`); `paths_from_csv` reads the files a CSV names."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any

from imgcls.errors import DoctorError
from imgcls.files import make_dir, write_json

__all__ = ["MANIFEST", "paths_from_csv", "quarantine", "restore"]

MANIFEST = "manifest.json"


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
