"""Dynamic batching: single images from concurrent requests grouped into model calls.

Requests put their preprocessed (3, H, W) arrays on a bounded queue and await one future
per image. A worker task on the event loop takes up to `max_batch` images — waiting at
most `max_wait_ms` for a batch to fill once the first image is there — and runs the model
in its own thread, so the event loop keeps accepting requests while the model works.
While one batch runs, the next one gathers: under load, batches fill by themselves, which
is why the default wait is 0 (measured on 2 cores: waiting 5 ms put a lone request's p50
at 27.8 ms against 19.9 ms, and gained nothing at 16 connections).

A batch that is all the server has to do (`alone`) runs on `predict_alone` when given: a
model session with every core's threads, where the others share the cores under load.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from imgcls.errors import Overloaded
from imgcls.validation import check_scalar

__all__ = ["Batcher"]


@dataclass
class _Item:
    array: np.ndarray
    future: asyncio.Future[np.ndarray]


class Batcher:
    """Groups images into batches for `predict`, a (N, 3, H, W) → (N, C) function.

    `on_batch(outputs)` is called in the model thread after every batch (metrics).
    `alone(n)` says whether a batch of n images is all the server is working on; such a
    batch runs on `predict_alone` when one is given.
    Use as `async with Batcher(...)`; `stop` lets the queued images finish first.
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = 16,
        max_wait_ms: float = 0.0,
        max_queue: int = 256,
        on_batch: Callable[[np.ndarray], None] | None = None,
        name: str = "model",
        workers: int = 1,
        predict_alone: Callable[[np.ndarray], np.ndarray] | None = None,
        alone: Callable[[int], bool] = lambda count: False,
    ) -> None:
        for count, value in (
            ("max_batch", max_batch),
            ("max_queue", max_queue),
            ("workers", workers),
        ):
            check_scalar(value, count, int, min_val=1)
        check_scalar(max_wait_ms, "max_wait_ms", min_val=0.0)
        self.predict = predict
        self.predict_alone = predict_alone
        self.alone = alone
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._pending: deque[_Item] = deque()
        self._arrived = asyncio.Event()  # something is pending
        self._filled = asyncio.Event()  # a full batch is pending
        # `workers` batches run at once, each in its own thread; see Service.load for why.
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=f"imgcls-{name}")
        self._free_workers = asyncio.Semaphore(workers)
        self._worker: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()  # batches in the model

    @property
    def depth(self) -> int:
        """Images waiting for the model (not counting the batch it is running)."""
        return len(self._pending)

    def has_room(self, count: int) -> bool:
        """Whether `count` more images fit in the queue now."""
        return self.depth + count <= self.max_queue

    async def __aenter__(self) -> Batcher:
        self._worker = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Finish the queued images, then stop the worker and its thread."""
        while self._pending or self._running:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=True)

    async def submit(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Model outputs for `arrays`, one row each, in order. Raises `Overloaded` at once,
        queuing nothing, when the queue has no room for all of them."""
        if not self.has_room(len(arrays)):
            raise Overloaded(
                f"{self.depth} images queued, no room for {len(arrays)} more (max {self.max_queue})"
            )
        loop = asyncio.get_running_loop()
        items = [_Item(array, loop.create_future()) for array in arrays]
        self._pending.extend(items)
        self._arrived.set()
        if len(self._pending) >= self.max_batch:
            self._filled.set()
        rows = await asyncio.gather(*(item.future for item in items))
        return np.stack(rows)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            await self._free_workers.acquire()  # images gather while every worker is busy
            if len(self._pending) < self.max_batch and self.max_wait > 0:
                self._filled.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._filled.wait(), self.max_wait)
            count = min(len(self._pending), self.max_batch)
            items = [self._pending.popleft() for _ in range(count)]
            items = [item for item in items if not item.future.done()]  # caller gone
            if not items:
                self._free_workers.release()
                continue
            task = asyncio.create_task(self._run_batch(loop, items))
            self._running.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._free_workers.release()

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, items: list[_Item]) -> None:
        batch = np.stack([item.array for item in items])
        predict = self.predict
        if self.predict_alone is not None and self.alone(len(items)):
            predict = self.predict_alone
        try:
            outputs = await loop.run_in_executor(self._executor, self._predict, predict, batch)
        except Exception as exc:  # the model failed: every request in the batch hears of it
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, row in zip(items, outputs, strict=True):
            if not item.future.done():
                item.future.set_result(row)

    def _predict(
        self, predict: Callable[[np.ndarray], np.ndarray], batch: np.ndarray
    ) -> np.ndarray:
        outputs = predict(batch)
        if self.on_batch is not None:
            self.on_batch(outputs)
        return outputs
