"""Files written atomically: a kill or a full disk at any moment leaves the previous version
whole; and names made safe to be file names."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError  # light: safetensors imports no torch

from imgcls.errors import WriteError

if TYPE_CHECKING:  # torch is imported where tensors are read or written, not at start-up
    pass

__all__ = [
    "atomic_write",
    "make_dir",
    "safe_filename",
    "write_json",
    "write_text",
]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(temporary_path)`, flush it to disk, then move it over `path` in one step.

    Raises WriteError (disk full, permission denied, ...) with `path` untouched."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    os.close(fd)
    try:
        write(tmp)
        # Without the flush a full disk can surface only after the rename (delayed
        # allocation), leaving a truncated file where the good checkpoint was.
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError | SafetensorError):  # safetensors' writer: its own type
            raise _write_error(path, exc) from None
        raise


def make_dir(path: str | os.PathLike) -> Path:
    """`path` as a folder, made with its parents when missing; WriteError when it cannot be
    (a file in the way, no permission)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise WriteError(f"{path}: cannot make this folder ({reason})") from None
    return path


def _write_error(path: Path, exc: BaseException) -> WriteError:
    reason = getattr(exc, "strerror", None) or str(exc)
    return WriteError(
        f"{path}: cannot write ({reason}); the previous {path.name}, if any, is left intact"
    )


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def safe_filename(name: str) -> str:
    """`name` (a model name, a path) as one file name: anything but letters, digits and
    `-_.` becomes `_`, so a name never reaches another folder."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.strip("/"))
