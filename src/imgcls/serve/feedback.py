"""The loop from production back to training: a log of served predictions, corrected
labels with their images, and their export as a data set `imgcls train` takes.

The log is one SQLite file (the standard library's embedded database). WAL mode lets
readers and one writer work at once and, with `synchronous=NORMAL`, a commit is on disk
once the process has written it. The server writes predictions from one thread, in
batches (serve/log_writer.py): a killed server loses the rows still queued, a clean stop
none. Several server processes may share the file; `busy_timeout` makes a writer wait its
turn.

The log keeps a bounded number of predictions: each write also deletes the oldest rows
beyond `max_rows`, in the same transaction, and `delete_older_than` removes rows past an
age. Corrections are never deleted.

Corrected images are kept as `FEEDBACK_DIR/<label>/<sha256><ext>`, a class-folder layout,
one file per image: a second correction of the same image moves it to the new class. A
store with `max_bytes` refuses images beyond it (`StorageFull`).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

from imgcls.data.images import IMAGE_EXTENSIONS, list_images
from imgcls.errors import StorageFull

__all__ = [
    "DEFAULT_FEEDBACK_DIR",
    "DEFAULT_FEEDBACK_MAX_MB",
    "DEFAULT_LOG_DB",
    "DEFAULT_LOG_MAX_ROWS",
    "DELETE_CHUNK",
    "FeedbackStore",
    "LoggedPrediction",
    "PredictionLog",
    "export_feedback",
    "sha256_hex",
]

DEFAULT_LOG_DB = "imgcls-predictions.db"  # in the working directory
DEFAULT_LOG_MAX_ROWS = 3_000_000  # about 0.8 GB: 270 MB a million (benchmarks/log_size.py)
DEFAULT_FEEDBACK_DIR = "imgcls-feedback"
DEFAULT_FEEDBACK_MAX_MB = 1000.0  # MB = 10^6 bytes, as --max-upload-mb

# The most rows one write or one `delete_older_than` deletes: a lowered cap, or a first
# age limit on an old log, is reached over several writes, none holding the file for long.
DELETE_CHUNK = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,            -- ISO 8601, UTC
    model TEXT NOT NULL,
    sha256 TEXT NOT NULL,          -- of the uploaded file's bytes
    filename TEXT NOT NULL,
    label TEXT NOT NULL,           -- top-1
    class_id TEXT NOT NULL,
    score REAL NOT NULL,           -- top-1 probability
    latency_ms REAL NOT NULL       -- the request's model time, decode to answer
);
CREATE INDEX IF NOT EXISTS predictions_sha256 ON predictions (sha256);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    model TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    label TEXT NOT NULL,           -- the corrected label
    path TEXT NOT NULL             -- the image, relative to the feedback directory
);
"""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class LoggedPrediction:
    """One row of the prediction log."""

    model: str
    sha256: str
    filename: str
    label: str
    class_id: str
    score: float
    latency_ms: float
    time: str = field(default_factory=_now)  # when answered, not when written


class PredictionLog:
    """The SQLite log of predictions and corrections; safe to share between threads."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection behind a lock: SQLite serialises writers anyway, and this keeps
        # each insert a few microseconds with no connection set-up.
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # The busy timeout first: server workers open the file at once, and switching it
        # to WAL or making its tables takes the write lock.
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def record_predictions(
        self, rows: Iterable[LoggedPrediction], max_rows: int | None = None
    ) -> int:
        """Append prediction rows and, with `max_rows`, delete the oldest rows beyond it
        (at most DELETE_CHUNK), in one transaction: a reader never sees more than
        `max_rows`. Returns the number of rows deleted."""
        values = [
            (r.time, r.model, r.sha256, r.filename, r.label, r.class_id, r.score, r.latency_ms)
            for r in rows
        ]
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO predictions (time, model, sha256, filename, label, class_id, "
                "score, latency_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            return 0 if max_rows is None else self._delete_beyond(max_rows)

    def _delete_beyond(self, max_rows: int) -> int:
        # Rows are only appended and deleted oldest first, so ids are consecutive and
        # MAX - MIN + 1 counts them in two index look-ups (COUNT(*) reads the whole table;
        # one SELECT of both MIN and MAX would too, hence the subqueries).
        first, last = self._db.execute(
            "SELECT (SELECT MIN(id) FROM predictions), (SELECT MAX(id) FROM predictions)"
        ).fetchone()
        excess = 0 if first is None else last - first + 1 - max_rows
        if excess <= 0:
            return 0
        cursor = self._db.execute(
            "DELETE FROM predictions WHERE id < ?", (first + min(excess, DELETE_CHUNK),)
        )
        return cursor.rowcount

    def delete_older_than(self, cutoff: datetime) -> int:
        """Delete the prediction rows answered before `cutoff` (an aware datetime) among
        the oldest DELETE_CHUNK; returns how many. Rows are appended in the order they
        were answered, so looking at the oldest only keeps the cost bounded at any size."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            cursor = self._db.execute(
                "DELETE FROM predictions WHERE id IN "
                "(SELECT id FROM predictions ORDER BY id LIMIT ?) AND time < ?",
                (DELETE_CHUNK, cutoff.astimezone(UTC).isoformat(timespec="milliseconds")),
            )
            return cursor.rowcount

    def record_feedback(self, model: str, sha256: str, label: str, path: str) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO feedback (time, model, sha256, label, path) VALUES (?, ?, ?, ?, ?)",
                (_now(), model, sha256, label, path),
            )

    def rows(self, table: str) -> list[dict]:
        """Every row of `predictions` or `feedback`, oldest first (for reports and tests)."""
        if table not in ("predictions", "feedback"):
            raise ValueError(f"table must be predictions or feedback, got {table!r}")
        with self._lock:
            cursor = self._db.execute(f"SELECT * FROM {table} ORDER BY id")
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class FeedbackStore:
    """Corrected images in class folders under `root`, taking at most `max_bytes` (None:
    no cap). The bytes in use are counted once, on first use, then kept up to date by
    `add`: a cap for this process's writes, not a watch on the folder."""

    def __init__(self, root: str | os.PathLike, max_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._used: int | None = None
        self._lock = threading.Lock()  # one add at a time: the count stays true

    @property
    def used_bytes(self) -> int:
        """Bytes of the files under `root`."""
        if self._used is None:
            files = self.root.rglob("*") if self.root.is_dir() else ()
            self._used = sum(path.stat().st_size for path in files if path.is_file())
        return self._used

    def add(self, data: bytes, filename: str, label: str) -> Path:
        """Keep the encoded image `data` as an example of `label`; returns its path.

        `label` must already be validated as one of the model's classes; the checks here
        only guard the file system (a label is a folder name). Raises StorageFull when the
        image would take the store past `max_bytes`, OSError when the disk refuses it;
        either way nothing changes.
        """
        if not label or label.startswith(".") or any(c in label for c in "/\\\0"):
            raise ValueError(f"label {label!r} cannot be a folder name")
        digest = sha256_hex(data)
        target = self.root / label / f"{digest}{_extension(data, filename)}"
        with self._lock:
            previous = list(self.root.glob(f"*/{digest}.*"))  # re-labelled: the newest wins
            used = self.used_bytes - sum(path.stat().st_size for path in previous)
            if self.max_bytes is not None and used + len(data) > self.max_bytes:
                raise StorageFull(
                    f"{self.root}: the corrected images take {self.used_bytes / 1e6:.1f} MB; "
                    f"this one ({len(data) / 1e6:.2f} MB) would pass the cap of "
                    f"{self.max_bytes / 1e6:g} MB"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.tmp")
            try:
                temporary.write_bytes(data)
                temporary.replace(target)  # atomic: a kill never leaves half an image
            except OSError:
                temporary.unlink(missing_ok=True)
                raise
            for path in previous:
                if path != target:
                    path.unlink()
            self._used = used + len(data)
        return target


def export_feedback(feedback_dir: str | os.PathLike, out: str | os.PathLike) -> dict[str, int]:
    """Copy the corrected images into `out/<label>/...`, the class-folder layout `imgcls
    train` and `imgcls doctor` read. Returns the number of images per class."""
    source, target = Path(feedback_dir), Path(out)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no feedback directory (nothing was corrected yet?)")
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target}: exists and is not empty; export into a new directory")
    counts: dict[str, int] = {}
    for path in list_images(source):
        relative = path.relative_to(source)
        if len(relative.parts) != 2:  # only <label>/<file>
            continue
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)
        counts[relative.parts[0]] = counts.get(relative.parts[0], 0) + 1
    if not counts:
        raise FileNotFoundError(f"{source}: no corrected images in class folders")
    return dict(sorted(counts.items()))


def _extension(data: bytes, filename: str) -> str:
    """The file's own image extension, else the usual one of the format Pillow sees."""
    suffix = Path(filename).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return suffix
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = (image.format or "").lower()
    except Exception:  # decodable by OpenCV only; the caller has checked it decodes
        kind = ""
    usual = {"jpeg": ".jpg", "tiff": ".tif"}.get(kind, f".{kind}")
    return usual if usual in IMAGE_EXTENSIONS else ".jpg"
