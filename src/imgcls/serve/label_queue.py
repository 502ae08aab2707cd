"""The labelling queue the web page's "to label" view works through: the rows of a label
file with an empty label (what `imgcls select` writes), less those already answered.

An image counts as answered once the feedback store holds it (under any label), so an
answer survives a restart and every server sharing the feedback folder sees it.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path

from imgcls.data.label_files import read_unlabelled

__all__ = ["LabelQueue", "QueueItem"]


@dataclass(frozen=True)
class QueueItem:
    id: int  # the row's place in the queue
    path: Path
    sha256: str  # of the file as it was when the server started

    @property
    def media_type(self) -> str:
        return mimetypes.guess_type(self.path.name)[0] or "application/octet-stream"


class LabelQueue:
    """The unlabelled rows of `listing`, checked against the corrected images in
    `feedback_root` (`<label>/<sha256><ext>`)."""

    def __init__(self, listing: str | os.PathLike, feedback_root: str | os.PathLike) -> None:
        self.listing = Path(listing)
        self.feedback_root = Path(feedback_root)
        self.items = [
            QueueItem(i, path, hashlib.sha256(path.read_bytes()).hexdigest())
            for i, path in enumerate(read_unlabelled(self.listing))
        ]

    def answered(self, item: QueueItem) -> bool:
        return any(self.feedback_root.glob(f"*/{item.sha256}.*"))

    def remaining(self) -> list[QueueItem]:
        """The items no one has answered yet, in queue order."""
        return [item for item in self.items if not self.answered(item)]

    def get(self, item_id: int) -> QueueItem | None:
        return self.items[item_id] if 0 <= item_id < len(self.items) else None
