"""Image galleries in HTML pages: the doctor's report and the label audit show the files they
flag as thumbnails, each made here once, as JPEG files beside the page or inlined in it."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import cv2

from imgcls.data.images import load_image
from imgcls.errors import ImageError
from imgcls.files import atomic_write

__all__ = ["Thumbnails", "thumbnail_jpeg"]


def thumbnail_jpeg(path: str | os.PathLike, side: int) -> bytes | None:
    """`path` shrunk to at most `side` pixels on its longer side, as JPEG bytes; None when
    the file is gone or does not decode."""
    try:
        image = load_image(path, min_side=side)  # a large JPEG decodes at 1/2..1/8 scale
    except (ImageError, OSError):
        return None
    height, width = image.shape[:2]
    scale = side / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:  # a decoded uint8 image always encodes, unless OpenCV lacks its JPEG codec
        raise RuntimeError(f"{path}: OpenCV could not encode a JPEG thumbnail of it")
    return encoded.tobytes()


class Thumbnails:
    """The thumbnails of one page, each file made once: JPEG files in `folder` (a folder
    beside the page, linked by relative path) or, without a folder, data URIs inside it."""

    def __init__(self, side: int, folder: str | os.PathLike | None = None) -> None:
        self.side = side
        self.folder = Path(folder) if folder is not None else None
        self._sources: dict[Path, str | None] = {}

    def src(self, path: str | os.PathLike) -> str | None:
        """The `<img src>` of the thumbnail of `path`; None when it cannot be shown."""
        path = Path(path)
        if path not in self._sources:
            self._sources[path] = self._make(path)
        return self._sources[path]

    def figure(self, path: str | os.PathLike, caption: str) -> str:
        """A `<figure>`: the thumbnail of `path` over `caption` (HTML, already escaped)."""
        src = self.src(path)
        image = f'<img src="{html.escape(src)}" alt="">' if src else "<div>(unreadable)</div>"
        return f"<figure>{image}<figcaption>{caption}</figcaption></figure>"

    def _make(self, path: Path) -> str | None:
        jpeg = thumbnail_jpeg(path, self.side)
        if jpeg is None:
            return None
        if self.folder is None:
            return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{len(self._sources):05d}.jpg"
        atomic_write(self.folder / name, lambda tmp: Path(tmp).write_bytes(jpeg))
        return f"{self.folder.name}/{name}"
