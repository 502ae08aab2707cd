"""The prediction log's writer: one thread that takes rows from a bounded queue and
writes them to SQLite in batches, so that no request waits on the disk.

A request only puts its rows in the queue, without blocking. When the queue is full (the
disk stalls, another process holds the database's write lock) its rows are dropped and
counted; a write that fails (disk full, read-only file) loses its batch and is counted
too. Either is said once in the log per outage and never fails a classification. On
`close` the writer writes everything still queued, then returns: a clean shutdown loses
nothing.

The same thread keeps the log bounded: each write deletes the rows beyond `max_rows`
(in its transaction), and, with `max_age_days`, it deletes older rows between batches,
once a minute, also when no request comes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from imgcls.serve.feedback import DELETE_CHUNK, LoggedPrediction, PredictionLog

__all__ = ["LogWriter"]

log = logging.getLogger("imgcls.serve")

_STOP = object()  # queued by `close`: everything before it is written, then the thread ends
AGE_CHECK_S = 60.0  # how often rows past the age limit are looked for
RETRY_S = 0.5  # how often a log with `retry` (PostgreSQL) is tried again while it fails


class LogWriter:
    """Writes `LoggedPrediction` rows to `log` from one thread, up to `max_batch` rows per
    transaction; at most `max_queue` rows wait, the rest are dropped. Keeps at most
    `max_rows` rows, none older than `max_age_days` (None: no limit)."""

    def __init__(
        self,
        log: PredictionLog,
        max_queue: int = 10_000,
        max_batch: int = 1_000,
        max_rows: int | None = None,
        max_age_days: float | None = None,
        on_dropped: Callable[[int], None] = lambda count: None,
        on_write_error: Callable[[], None] = lambda: None,
        on_deleted: Callable[[int], None] = lambda count: None,
    ) -> None:
        if max_queue < 1 or max_batch < 1:
            raise ValueError(
                f"max_queue and max_batch must be at least 1, got {max_queue} and {max_batch}"
            )
        self.log = log
        self.max_batch = max_batch
        self.max_rows = max_rows
        self.max_age = None if max_age_days is None else timedelta(days=max_age_days)
        self._on_dropped = on_dropped
        self._on_write_error = on_write_error
        self._on_deleted = on_deleted
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._dropping = False  # in a queue-full outage, already said in the log
        self._failing = False  # in a write-error outage, already said in the log
        self._next_age_check = 0.0  # time.monotonic() of the next deletion by age
        # A log whose failures pass (a database server restarting) keeps a failed batch
        # and writes it again, holding at most max_queue rows; SQLite's failures (a full
        # disk) do not pass in seconds, and its batches are dropped.
        self._retry = bool(getattr(log, "retry", False))
        self._held: list[LoggedPrediction] = []
        self._thread = threading.Thread(target=self._run, name="imgcls-log-writer", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Rows waiting to be written (a failed batch held for retry included)."""
        return self._queue.qsize() + len(self._held)

    def put(self, rows: Sequence[LoggedPrediction]) -> None:
        """Queue `rows` for writing; never blocks. A row that does not fit is dropped."""
        for index, row in enumerate(rows):
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                self._dropped(len(rows) - index)
                return
        self._dropping = False

    def put_task(self, task: Callable[[], object]) -> bool:
        """Queue `task` to run on the writer thread after the rows before it (another
        store's write, e.g. a kept image); never blocks. False when the queue is full."""
        try:
            self._queue.put_nowait(task)
        except queue.Full:
            return False
        return True

    def record_feedback(self, model: str, sha256: str, label: str, path: str) -> None:
        """Log a correction now, in the caller's thread (a request waits for it); a failed
        write is counted and said like the writer's own, and not raised."""
        self._attempt(
            lambda: self.log.record_feedback(model, sha256, label, path), "writing a correction"
        )

    def close(self) -> None:
        """Write every queued row, then stop the thread (blocks until it is done)."""
        self._queue.put(_STOP)  # waits for room: the writer is emptying the queue
        self._thread.join()

    def _dropped(self, count: int) -> None:
        self._on_dropped(count)
        if not self._dropping:
            self._dropping = True
            log.warning(
                "prediction log: %d rows queued for the disk, dropping new rows until the "
                "writer catches up (counted in imgcls_prediction_log_dropped_total)",
                self._queue.maxsize,
            )

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, tasks = self._held, []
            self._held = []
            try:
                # Sleep until there is work (or, with rows held, until the next retry).
                item = self._queue.get(timeout=RETRY_S if batch else self._sleep_s())
            except queue.Empty:  # with an age limit: time to look for old rows
                item = None
            while item is not None:
                if item is _STOP:
                    stop = True  # put after every row it must write: the batch is the rest
                    break
                if callable(item):
                    tasks.append(item)
                else:
                    batch.append(item)
                if len(batch) >= self.max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                deleted = self._attempt(
                    lambda b=batch: self.log.record_predictions(b, self.max_rows),
                    f"writing {len(batch)} rows",
                )
                if deleted:
                    self._on_deleted(deleted)
                if self._failing and self._retry:
                    self._hold(batch, final=stop)
            for task in tasks:
                self._attempt(task, "a queued write")
            if self.max_age is not None and time.monotonic() >= self._next_age_check:
                self._delete_old()

    def _hold(self, batch: list[LoggedPrediction], final: bool) -> None:
        """Keep a failed batch for the next try: its newest max_queue rows, the rest
        dropped and counted (all of them when the writer is stopping)."""
        self._held = [] if final else batch[-self._queue.maxsize :]
        if len(batch) > len(self._held):
            self._dropped(len(batch) - len(self._held))

    def _sleep_s(self) -> float | None:
        """How long the thread may wait for rows: with an age limit, until it next looks
        for old rows (so they go also when no request comes); else for ever."""
        if self.max_age is None:
            return None
        return max(0.0, self._next_age_check - time.monotonic())

    def _delete_old(self) -> None:
        deleted = self._attempt(
            lambda: self.log.delete_older_than(datetime.now(UTC) - self.max_age),
            "deleting old rows",
        )
        if deleted:
            self._on_deleted(deleted)
        # A full chunk means more may be old: go on at once, between batches; else wait.
        more = deleted == DELETE_CHUNK
        self._next_age_check = time.monotonic() + (0.0 if more else AGE_CHECK_S)

    def _attempt(self, write: Callable[[], int | None], what: str) -> int | None:
        """`write()`'s result, or None when it failed: counted, and said once per outage."""
        try:
            result = write()
        except Exception as exc:  # sqlite3 or OS errors; a classification must not see them
            self._on_write_error()
            if not self._failing:
                self._failing = True
                log.error(
                    "prediction log: %s in %s failed (%s: %s); rows are lost "
                    "until writes succeed again (counted in "
                    "imgcls_prediction_log_write_errors_total)",
                    what,
                    self.log.path,
                    type(exc).__name__,
                    exc,
                )
            return None
        if self._failing:
            self._failing = False
            log.warning("prediction log: writes to %s succeed again", self.log.path)
        return result
