"""The prediction log in PostgreSQL (`--log-db postgresql://...`): the same tables and
calls as the SQLite `PredictionLog`, so that several server processes, on one machine or
many, share one log and one feedback index.

psycopg 3 (the extra `imgcls[postgres]`). One connection, used by the log's writer
thread (and a correction's request thread) behind a lock; a lost connection is opened
again on the next call. A call that fails raises: the writer keeps its rows and tries
again (serve/log_writer.py, `retry`), so a database that is down for a while loses
nothing until the writer's buffer is full, and what is dropped beyond it is counted.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

from imgcls.errors import StartupError
from imgcls.serve.feedback import DELETE_CHUNK, LoggedPrediction, _now

__all__ = ["PostgresLog", "is_postgres_url"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id BIGSERIAL PRIMARY KEY,
    time TEXT NOT NULL,
    model TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    filename TEXT NOT NULL,
    label TEXT NOT NULL,
    class_id TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    latency_ms DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_sha256 ON predictions (sha256);
CREATE TABLE IF NOT EXISTS feedback (
    id BIGSERIAL PRIMARY KEY,
    time TEXT NOT NULL,
    model TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    label TEXT NOT NULL,
    path TEXT NOT NULL
);
"""
CONNECT_TIMEOUT_S = 3  # a database that does not answer is "down", not a hung writer


def is_postgres_url(value: str) -> bool:
    return value.startswith(("postgresql://", "postgres://"))


def _redacted(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    user = f"{parts.username}:***@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}{host}{port}"))


class PostgresLog:
    """Predictions and corrections in the PostgreSQL database at `url`."""

    retry = True  # the writer keeps a failed batch and writes it again (see the module)

    def __init__(self, url: str) -> None:
        try:
            import psycopg  # deferred: the extra `imgcls[postgres]`
        except ModuleNotFoundError:
            raise StartupError(
                "--log-db postgresql://... needs psycopg; pip install 'imgcls[postgres]'"
            ) from None
        self._psycopg = psycopg
        self.url = url
        self.path = _redacted(url)  # what messages name, as the SQLite log's path
        self._lock = threading.Lock()
        self._db = None
        try:
            with self._lock:
                self._connection().execute(_SCHEMA)
        except psycopg.Error as exc:
            raise StartupError(f"{self.path}: cannot open the prediction log ({exc})") from None

    def _connection(self):
        if self._db is None or self._db.closed or self._db.broken:
            self._db = self._psycopg.connect(
                self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
            )
        return self._db

    def _run(self, work):
        """`work(connection)` in one transaction; a broken connection is dropped, so the
        next call opens a new one."""
        with self._lock:
            try:
                db = self._connection()
                with db.transaction():
                    return work(db)
            except self._psycopg.OperationalError:
                if self._db is not None and self._db.broken:
                    self._db.close()
                raise

    def record_predictions(
        self, rows: Iterable[LoggedPrediction], max_rows: int | None = None
    ) -> int:
        values = [
            (r.time, r.model, r.sha256, r.filename, r.label, r.class_id, r.score, r.latency_ms)
            for r in rows
        ]

        def write(db) -> int:
            with db.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO predictions (time, model, sha256, filename, label, class_id, "
                    "score, latency_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    values,
                )
            if max_rows is None:
                return 0
            # Ids come from one sequence, so the newest max_rows ids are the ones to keep.
            deleted = db.execute(
                "DELETE FROM predictions WHERE id IN (SELECT id FROM predictions WHERE id <= "
                "(SELECT MAX(id) FROM predictions) - %s ORDER BY id LIMIT %s)",
                (max_rows, DELETE_CHUNK),
            )
            return deleted.rowcount

        return self._run(write)

    def delete_older_than(self, cutoff: datetime) -> int:
        stamp = cutoff.astimezone(UTC).isoformat(timespec="milliseconds")
        return self._run(
            lambda db: (
                db.execute(
                    "DELETE FROM predictions WHERE id IN (SELECT id FROM predictions "
                    "ORDER BY id LIMIT %s) AND time < %s",
                    (DELETE_CHUNK, stamp),
                ).rowcount
            )
        )

    def record_feedback(self, model: str, sha256: str, label: str, path: str) -> None:
        self._run(
            lambda db: db.execute(
                "INSERT INTO feedback (time, model, sha256, label, path) "
                "VALUES (%s, %s, %s, %s, %s)",
                (_now(), model, sha256, label, path),
            )
        )

    def rows(self, table: str) -> list[dict]:
        if table not in ("predictions", "feedback"):
            raise ValueError(f"table must be predictions or feedback, got {table!r}")

        def read(db) -> list[dict]:
            cursor = db.execute(f"SELECT * FROM {table} ORDER BY id")
            names = [column.name for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

        return self._run(read)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
