"""The prediction log's writer: one thread that takes rows from a bounded queue and
writes them to SQLite in batches, so that no request waits on the disk.

A request only puts its rows in the queue, without blocking. When the queue is full (the
disk stalls, another process holds the database's write lock) its rows are dropped and
counted; a write that fails (disk full, read-only file) loses its batch and is counted
too. Either is said once in the log per outage and never fails a classification. On
`close` the writer writes everything still queued, then returns: a clean shutdown loses
nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence

from imgcls.feedback import LoggedPrediction, PredictionLog

__all__ = ["LogWriter"]

log = logging.getLogger("imgcls.serve")

_STOP = object()  # queued by `close`: everything before it is written, then the thread ends


class LogWriter:
    """Writes `LoggedPrediction` rows to `log` from one thread, up to `max_batch` rows per
    transaction; at most `max_queue` rows wait, the rest are dropped."""

    def __init__(
        self,
        log: PredictionLog,
        max_queue: int = 10_000,
        max_batch: int = 1_000,
        on_dropped: Callable[[int], None] = lambda count: None,
        on_write_error: Callable[[], None] = lambda: None,
    ) -> None:
        if max_queue < 1 or max_batch < 1:
            raise ValueError(
                f"max_queue and max_batch must be at least 1, got {max_queue} and {max_batch}"
            )
        self.log = log
        self.max_batch = max_batch
        self._on_dropped = on_dropped
        self._on_write_error = on_write_error
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._dropping = False  # in a queue-full outage, already said in the log
        self._failing = False  # in a write-error outage, already said in the log
        self._thread = threading.Thread(target=self._run, name="imgcls-log-writer", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Rows waiting to be written."""
        return self._queue.qsize()

    def put(self, rows: Sequence[LoggedPrediction]) -> None:
        """Queue `rows` for writing; never blocks. A row that does not fit is dropped."""
        for index, row in enumerate(rows):
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                self._dropped(len(rows) - index)
                return
        self._dropping = False

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
            batch = []
            item = self._queue.get()  # sleep until there is work
            while True:
                if item is _STOP:
                    stop = True  # put after every row it must write: the batch is the rest
                    break
                batch.append(item)
                if len(batch) >= self.max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch)

    def _write(self, batch: list[LoggedPrediction]) -> None:
        try:
            self.log.record_predictions(batch)
        except Exception as exc:  # sqlite3 or OS errors; a classification must not see them
            self._on_write_error()
            if not self._failing:
                self._failing = True
                log.error(
                    "prediction log: writing %d rows to %s failed (%s: %s); rows are lost "
                    "until writes succeed again (counted in "
                    "imgcls_prediction_log_write_errors_total)",
                    len(batch),
                    self.log.path,
                    type(exc).__name__,
                    exc,
                )
            return
        if self._failing:
            self._failing = False
            log.warning("prediction log: writes to %s succeed again", self.log.path)
