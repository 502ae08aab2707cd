"""Decoding ahead of the model: files become batches of model input on a thread pool while
the model runs on the batches before them."""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgcls.data.images import EncodedImage, decode_workers
from imgcls.errors import ImageError

__all__ = ["PreparedBatch", "Prefetcher"]


@dataclass(frozen=True)
class PreparedBatch:
    """Consecutive files: the model input of those that decoded, and each file's failure
    (FileNotFoundError or ImageError) or None, in order."""

    inputs: np.ndarray  # (decoded files, 3, H, W) float32
    files: list[tuple[str, Exception | None]]

    def apply(self, model_call: Callable[[np.ndarray], Sequence]) -> Iterator[tuple[str, Any]]:
        """(path, output) per file from one `model_call` on the inputs; a file that failed
        has its exception in place of an output."""
        outputs = iter(model_call(self.inputs) if len(self.inputs) else [])
        for path, failure in self.files:
            yield path, next(outputs) if failure is None else failure


class Prefetcher:
    """Decodes and preprocesses files on a thread pool, `ahead` batches in front of the
    model, each image straight into its row of a preallocated batch array (no copy into
    the batch afterwards). OpenCV and ONNX Runtime both release the GIL, so the pool's
    threads decode while the model runs.

    `prepare(file, row)` writes one file's model input into `row`, a (3, H, W) float32
    view, or raises FileNotFoundError or ImageError. A file is a path, or an `EncodedImage`
    (its bytes, read elsewhere) known by its name.
    """

    def __init__(
        self,
        prepare: Callable[[str | EncodedImage, np.ndarray], object],
        input_size: tuple[int, int, int],
        batch_size: int,
        ahead: int = 2,
    ) -> None:
        self.prepare = prepare
        self.input_size = input_size
        self.batch_size = batch_size
        self.ahead = ahead

    def batches(self, paths: Iterable[str | os.PathLike | EncodedImage]) -> Iterator[PreparedBatch]:
        """`PreparedBatch`es of `batch_size` files (the last may be smaller), in order."""
        workers = decode_workers(4)
        files = (path if isinstance(path, EncodedImage) else str(path) for path in paths)
        with ThreadPoolExecutor(workers, thread_name_prefix="imgcls-decode") as pool:
            pending: deque[tuple[np.ndarray, list[str], list[Future]]] = deque()
            while chunk := list(itertools.islice(files, self.batch_size)):
                names = [f.name if isinstance(f, EncodedImage) else f for f in chunk]
                batch = np.empty((len(chunk), *self.input_size), np.float32)
                slots = zip(chunk, batch, strict=True)
                rows = [pool.submit(self._prepare_into, file, row) for file, row in slots]
                pending.append((batch, names, rows))
                if len(pending) > self.ahead:
                    yield _collect(*pending.popleft())
            while pending:
                yield _collect(*pending.popleft())

    def _prepare_into(self, file: str | EncodedImage, row: np.ndarray) -> Exception | None:
        try:
            self.prepare(file, row)
        except (FileNotFoundError, ImageError) as exc:
            return exc
        return None


def _collect(batch: np.ndarray, names: list[str], rows: list[Future]) -> PreparedBatch:
    """A batch once its rows are written: the decodable rows, and each file's failure."""
    failures = [row.result() for row in rows]
    decoded = np.array([failure is None for failure in failures])
    inputs = batch if decoded.all() else batch[decoded]
    return PreparedBatch(inputs, list(zip(names, failures, strict=True)))
