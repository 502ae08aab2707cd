"""How many images the whole server is working on, across its worker processes, so that
a batch with nothing else running beside it can take every core (the lone request).

One counter per worker process, in shared memory: a worker writes only its own slot (from
its event loop, the one thread that counts), and any worker reads them all. A request
counts its images from the moment it asks for a classification until it is answered:
decoding, queueing and the model call.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from multiprocessing.sharedctypes import RawArray

__all__ = ["InFlight"]


class InFlight:
    """The images in flight of worker `index` among the workers sharing `slots`.

    `InFlight()` is a server of one process; `InFlight.shared(n)` makes the slots of n
    workers in the parent, each given to its worker as `InFlight(slots, index)`.
    """

    def __init__(self, slots: ctypes.Array | None = None, index: int = 0) -> None:
        self.slots = slots if slots is not None else RawArray("q", 1)
        self.index = index
        self.slots[index] = 0  # a restarted worker's slot starts empty

    @staticmethod
    def shared(workers: int) -> ctypes.Array:
        """Zeroed slots for `workers` processes (passed to them when they start)."""
        return RawArray("q", workers)

    @contextlib.contextmanager
    def holding(self, images: int) -> Iterator[None]:
        """Count `images` as in flight in this worker for the duration of the block."""
        self.slots[self.index] += images
        try:
            yield
        finally:
            self.slots[self.index] -= images

    @property
    def total(self) -> int:
        """Images in flight in every worker."""
        return sum(self.slots)

    def crowded(self, margin: int = 2) -> bool:
        """Whether this worker has at least `margin` more images in flight than the least
        busy other worker (never with one worker)."""
        others = [count for index, count in enumerate(self.slots) if index != self.index]
        return bool(others) and self.slots[self.index] >= min(others) + margin

    def alone(self, images: int) -> bool:
        """Whether a batch of `images` is all the server is working on."""
        return self.total <= images
