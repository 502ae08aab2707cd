"""The server's decode memory budget: pixels being decoded at once, across all requests.

Each upload's pixel cap bounds one image, not the server: four 62-megapixel PNGs decoded
at once take four times the memory of one. Decoding threads hold a share of the budget,
the pixel count the image's header declares, from before its decode until its model
input is ready; an image that does not fit waits its turn (first come, first served), so
concurrent large images queue instead of multiplying the process's memory.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from imgcls.validation import check_scalar

__all__ = ["DecodeBudget"]


class DecodeBudget:
    """A first-come-first-served weighted semaphore of `pixels`, for decoding threads."""

    def __init__(self, pixels: int) -> None:
        check_scalar(pixels, "pixels", int, min_val=1)
        self.pixels = pixels
        self._used = 0
        self._lock = threading.Lock()
        self._queue: deque[tuple[int, threading.Event]] = deque()

    @property
    def used(self) -> int:
        """Pixels held now."""
        return self._used

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Hold `pixels` of the budget (at most all of it) for the block, waiting first
        while the images ahead do not leave room."""
        share = min(max(pixels, 1), self.pixels)
        with self._lock:
            granted = not self._queue and self._used + share <= self.pixels
            if granted:
                self._used += share
            else:
                turn = threading.Event()
                self._queue.append((share, turn))
        if not granted:
            turn.wait()  # set by a release, with the share already counted as used
        try:
            yield
        finally:
            self._release(share)

    def _release(self, share: int) -> None:
        with self._lock:
            self._used -= share
            while self._queue and self._used + self._queue[0][0] <= self.pixels:
                waiting, turn = self._queue.popleft()
                self._used += waiting
                turn.set()
