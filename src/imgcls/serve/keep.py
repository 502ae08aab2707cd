"""A bounded sample of the images the server answered, chosen as they arrive for being
worth a person's label: the ones answered "unknown", the lowest-margin ones (top-1 minus
top-2 score), and a small random share as a control.

The sample is a folder beside the feedback store, content-addressed (`<sha256><ext>`,
an image answered twice is kept once), with `kept.csv`, a label file with an empty
`label` column: `imgcls select KEEP_DIR/kept.csv --model RUN` ranks it and `imgcls train`
takes it once labelled. It never holds more than its quota: CONTROL_SHARE of it for the
random control (oldest out first), the rest for "unknown" and low-margin images (the
highest margin out first, "unknown" last). The decision is made on the request's path
(a comparison); the files are written by the prediction log's writer thread.

Off by default (`--keep-images-mb`): uploads can be personal data, and keeping them is
the operator's decision, not a side effect of serving.
"""

from __future__ import annotations

import csv
import io
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imgcls.files import atomic_write
from imgcls.serve.feedback import _extension, _now  # one naming of stored images

__all__ = ["CONTROL_RATE", "CONTROL_SHARE", "DEFAULT_KEEP_DIR", "KeptSample"]

DEFAULT_KEEP_DIR = "imgcls-kept"
CONTROL_SHARE = 0.1  # of the quota, for the random control
CONTROL_RATE = 0.01  # the chance that any answered image joins the control
LISTING = "kept.csv"
COLUMNS = ("path", "label", "guess", "margin", "reason", "time")
MAX_PENDING_BYTES = 64_000_000  # image bytes queued for the writer; beyond, not kept


@dataclass
class _Entry:
    name: str  # the file, in the folder
    size: int
    guess: str
    margin: float
    reason: str  # unknown | low margin | random control
    time: str

    @property
    def control(self) -> bool:
        return self.reason == "random control"


class KeptSample:
    """The kept images under `root`, at most `max_bytes` of them (see the module)."""

    def __init__(
        self,
        root: str | os.PathLike,
        max_bytes: int,
        submit: Callable[[Callable[[], None]], bool],
        control_rate: float = CONTROL_RATE,
        seed: int | None = None,
    ) -> None:
        self.root = Path(root)
        self._submit = submit  # runs a write on the writer thread; False when it is full
        self.max_bytes = max_bytes
        self.control_rate = control_rate
        self._random = random.Random(seed)
        self._lock = threading.Lock()  # offers (event loop) against writes (writer thread)
        self._pending: dict[str, _Entry] = {}  # offered, not yet written, by sha256
        self._entries: dict[str, _Entry] = self._read()  # by sha256

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(entry.size for entry in self._entries.values())

    def offer(
        self, data: bytes, sha256: str, filename: str, guess: str, margin: float, unknown: bool
    ) -> bool:
        """Queue this answered image's write if the sample wants it (not kept already,
        room for it, or a lower margin than a kept one); True when queued."""
        if unknown:
            reason = "unknown"
        elif self._random.random() < self.control_rate:
            reason = "random control"
        else:
            reason = "low margin"
        entry = _Entry(
            f"{sha256}{_extension(data, filename)}", len(data), guess,
            -1.0 if unknown else margin, reason, _now(),
        )  # fmt: skip
        with self._lock:
            if sha256 in self._entries or sha256 in self._pending:
                return False
            if sum(e.size for e in self._pending.values()) + entry.size > MAX_PENDING_BYTES:
                return False
            if reason == "low margin" and not self._room_for(entry):
                return False
            self._pending[sha256] = entry
        if self._submit(lambda: self._keep(sha256, bytes(data), entry)):
            return True
        with self._lock:
            del self._pending[sha256]
        return False

    def _room_for(self, entry: _Entry) -> bool:
        """Whether a low-margin image would stay: room for it, or a surer image (kept or
        on its way) to push out. The caller holds the lock."""
        budget = self.max_bytes * (1 - CONTROL_SHARE)
        others = [e for e in (*self._entries.values(), *self._pending.values()) if not e.control]
        if entry.size > budget:
            return False
        if sum(e.size for e in others) + entry.size <= budget:
            return True
        return entry.margin < max(e.margin for e in others)

    def _keep(self, sha256: str, data: bytes, entry: _Entry) -> None:
        """Write the image, then evict beyond the quota and rewrite the listing (the
        writer thread). An image larger than its part of the quota is not kept."""
        try:
            share = CONTROL_SHARE if entry.control else 1 - CONTROL_SHARE
            if entry.size > self.max_bytes * share:
                return
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(self.root / entry.name, lambda tmp: Path(tmp).write_bytes(data))
            with self._lock:
                self._entries[sha256] = entry
                evicted = self._evict(entry.control)
            for name in evicted:
                (self.root / name).unlink(missing_ok=True)
            self._write_listing()
        finally:
            with self._lock:
                del self._pending[sha256]

    def _evict(self, control: bool) -> list[str]:
        """Drop entries of the same part beyond its quota: the oldest controls, or the
        highest margins ("unknown" last). The caller holds the lock."""
        budget = self.max_bytes * (CONTROL_SHARE if control else 1 - CONTROL_SHARE)
        part = {k: e for k, e in self._entries.items() if e.control == control}
        used = sum(e.size for e in part.values())
        if control:
            order = sorted(part, key=lambda k: part[k].time)
        else:
            order = sorted(part, key=lambda k: part[k].margin, reverse=True)
        evicted = []
        for key in order:
            if used <= budget:
                break
            used -= part[key].size
            evicted.append(self._entries.pop(key).name)
        return evicted

    def _write_listing(self) -> None:
        with self._lock:
            rows = sorted(self._entries.values(), key=lambda e: e.margin)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(COLUMNS)
        for e in rows:
            writer.writerow([e.name, "", e.guess, f"{e.margin:.4f}", e.reason, e.time])
        text = buffer.getvalue()
        atomic_write(self.root / LISTING, lambda tmp: Path(tmp).write_text(text, "utf-8"))

    def _read(self) -> dict[str, _Entry]:
        """The sample a previous run left (its listing, for the files still there)."""
        listing = self.root / LISTING
        if not listing.is_file():
            return {}
        entries = {}
        with open(listing, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                path = self.root / row.get("path", "")
                if path.is_file():
                    entries[path.stem] = _Entry(
                        path.name, path.stat().st_size, row.get("guess", ""),
                        float(row.get("margin") or 1.0), row.get("reason", "low margin"),
                        row.get("time", ""),
                    )  # fmt: skip
        return entries
