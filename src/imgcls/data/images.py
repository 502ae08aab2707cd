"""Decode any real-world image into RGB uint8 HxWx3.

One entry point, `load_image`, takes a path, encoded bytes (bare, or named: `EncodedImage`),
a numpy array or a PIL image.
The header is read first (with Pillow, which parses it without decoding pixels) so that a
decompression bomb is refused before a single pixel is allocated. A JPEG is decoded by
libjpeg-turbo's own API (simplejpeg: the same pixels as OpenCV's decoder, about twice as
fast, docs/performance.md); every other format by OpenCV, and Pillow is the fallback for
what OpenCV cannot read (some GIFs, exotic TIFFs).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from imgcls.errors import ImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "EncodedImage",
    "ImageSource",
    "declared_pixels",
    "decode_workers",
    "list_images",
    "load_image",
]

DEFAULT_MAX_PIXELS = 64_000_000


def decode_workers(limit: int = 8) -> int:
    """Threads for decoding many files at once: one per usable core, at most `limit`
    (OpenCV and libjpeg release the GIL, so threads decode in parallel)."""
    return max(1, min(limit, len(os.sched_getaffinity(0))))


IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".png",
        ".webp",
        ".bmp",
        ".dib",
        ".tif",
        ".tiff",
        ".gif",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".jp2",
        ".avif",
    }
)


@dataclass(frozen=True)
class EncodedImage:
    """A file's encoded bytes, read elsewhere (object storage, a Ray read task), with the
    name its errors give: the file's path, as if `load_image` had read it."""

    name: str
    data: bytes


# What `load_image` accepts: a file path, encoded file bytes, an RGB array or a PIL image.
ImageSource = (
    str | os.PathLike | bytes | bytearray | memoryview | EncodedImage | np.ndarray | Image.Image
)

_EXIF_ORIENTATION = 0x0112
# Note: Pillow's format plugins raise whatever their parsing hits on a corrupt file, not only
# OSError/ValueError: fuzzing found TypeError from a TIFF tag of the wrong type (a bit flip
# at byte 72), and struct.error and IndexError are possible too. On these two paths any
# exception from Pillow means "not a valid image", so all are turned into ImageError.

# Scale factors libjpeg decodes at directly (DCT scaling), largest first.
_JPEG_REDUCTIONS = (8, 4, 2)


@dataclass(frozen=True)
class _Header:
    width: int
    height: int
    has_alpha: bool
    orientation: int  # EXIF orientation 1..8; 1 means upright
    format: str  # Pillow's name: JPEG, PNG, ...


def load_image(
    source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> np.ndarray:
    """Return `source` as an RGB uint8 array of shape (H, W, 3), upright per its EXIF tag.

    With `min_side`, a large JPEG may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg scales
    while decoding, several times faster), never with its shorter side below `min_side`.
    Raises FileNotFoundError for a missing path and ImageError for anything that is not
    an acceptable image: empty, not an image, truncated, or over `max_pixels` pixels.
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, _describe(source), max_pixels)
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, _describe(source), max_pixels)
    if isinstance(source, bytes | bytearray | memoryview):
        data, name = bytes(source), "<bytes>"
    elif isinstance(source, EncodedImage):
        data, name = source.data, source.name
    elif isinstance(source, str | os.PathLike):
        data, name = _read_file(Path(source)), str(source)
    else:
        raise TypeError(
            f"cannot read an image from {type(source).__name__}; "
            "give a path, encoded bytes, a numpy array or a PIL image"
        )
    return decode_image_bytes(data, name=name, max_pixels=max_pixels, min_side=min_side)


def decode_image_bytes(
    data: bytes, *, name: str, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> np.ndarray:
    """Decode encoded image bytes; `name` is how errors refer to the input."""
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    header = _read_header(data, name, max_pixels)
    if header is not None:
        _check_not_truncated(data, name)
    image = None
    if header is not None and header.format == "JPEG" and not header.has_alpha:
        image = _decode_jpeg(data, header, min_side)
    if image is None:
        image = _decode_with_opencv(data, name, header, min_side)
    if image is None:
        image = _decode_with_pillow(data, name)
    elif header is None:
        # Pillow could not read the header, so the cap is checked after OpenCV's decode;
        # OpenCV applies its own limit of 2^30 pixels while decoding.
        _check_pixels(image.shape[1], image.shape[0], name, max_pixels)
    if header is not None and header.orientation != 1:
        image = _apply_orientation(image, header.orientation)
    return np.ascontiguousarray(image)


def declared_pixels(data: bytes) -> int | None:
    """Width x height as the header declares it, without decoding; None when Pillow does
    not know the format or cannot read the header (decoding then says what is wrong)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Exception:  # any type on corrupt input (see the note at the top)
        return None
    return width * height


def list_images(directory: str | os.PathLike) -> list[Path]:
    """All image files under `directory`, recursively, sorted for a stable order."""
    root = Path(directory)
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )


def _describe(source: Any) -> str:
    return f"<{type(source).__name__}>"


def _read_file(path: Path) -> bytes:
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file ({exc.strerror or exc})") from None


def _read_header(data: bytes, name: str, max_pixels: int) -> _Header | None:
    """Size, alpha and orientation from the header alone; None if Pillow does not know it.

    The pixel cap is checked here, before anything that could make Pillow decode pixels."""
    try:
        with warnings.catch_warnings():
            # Pillow warns about broken metadata; the image is then refused or used as is.
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                _check_pixels(width, height, name, max_pixels)
                has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
                    "transparency" in im.info
                )
                orientation = _orientation(im)
                image_format = im.format or ""
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow refuses above twice its MAX_IMAGE_PIXELS (about 179 MP) on its own.
        raise ImageError(f"{name}: refused, too many pixels ({exc})") from None
    except UnidentifiedImageError:
        return None
    except Exception as exc:  # Pillow: any type on corrupt input (see the note at the top)
        raise ImageError(f"{name}: not a valid image ({exc})") from None
    return _Header(width, height, has_alpha, orientation, image_format)


def _orientation(im: Image.Image) -> int:
    # Pillow finds a PNG's EXIF after the pixel data only by decoding the whole image, so
    # only EXIF that the header parse already found is read (JPEG/TIFF keep it up front).
    if im.format not in ("JPEG", "MPO", "TIFF") and "exif" not in im.info:
        return 1
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block must not make the image unreadable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _check_pixels(width: int, height: int, name: str, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: invalid image size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(
            f"{name}: refused, {width}x{height} is {width * height:,} pixels, "
            f"over the limit of {max_pixels:,} (raise max_pixels to allow it)"
        )


def _check_not_truncated(data: bytes, name: str) -> None:
    """Refuse JPEG and PNG files cut short: their decoders would fill the rest with gray.

    A JPEG ends with an end-of-image marker after its last scan; a PNG with an IEND chunk.
    Trailing bytes after those (camera trailers) are allowed.
    """
    if data[:3] == b"\xff\xd8\xff":
        if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
            raise ImageError(f"{name}: truncated JPEG (no end-of-image marker after the last scan)")
    elif data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-4096:]:
        raise ImageError(f"{name}: truncated PNG (no IEND chunk)")


def _jpeg_reduction(header: _Header, min_side: int | None) -> int:
    """The largest DCT scale-down (1, 2, 4 or 8) that keeps the shorter side >= min_side."""
    if min_side:
        shorter = min(header.width, header.height)
        for factor in _JPEG_REDUCTIONS:
            if shorter // factor >= min_side:
                return factor
    return 1


def _decode_jpeg(data: bytes, header: _Header, min_side: int | None) -> np.ndarray | None:
    """libjpeg-turbo's decode, at 1/2, 1/4 or 1/8 scale where `min_side` allows; None when
    it reports a fault (OpenCV, which tolerates recoverable ones, then decodes as before)."""
    factor = _jpeg_reduction(header, min_side)
    try:
        return simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            min_height=-(-header.height // factor) if factor > 1 else 0,
            min_width=-(-header.width // factor) if factor > 1 else 0,
        )
    except ValueError:
        return None


def _decode_with_opencv(
    data: bytes, name: str, header: _Header | None, min_side: int | None
) -> np.ndarray | None:
    """OpenCV's decode; None when OpenCV cannot read the format (Pillow then tries)."""
    try:
        return _imdecode(np.frombuffer(data, dtype=np.uint8), header, min_side)
    except cv2.error as exc:
        # OpenCV asserts on what it will not decode, e.g. a side over 2^20 pixels.
        reason = str(exc).strip().splitlines()[-1]
        raise ImageError(f"{name}: cannot decode image ({reason})") from None


def _imdecode(
    buffer: np.ndarray, header: _Header | None, min_side: int | None
) -> np.ndarray | None:
    # Orientation is applied by us from the EXIF tag Pillow read, the same way for every
    # format, so OpenCV is told to ignore it.
    if header is not None and header.has_alpha:
        decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
        return None if decoded is None else _array_to_rgb(decoded, "", None, bgr=True)
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    if header is not None and header.format == "JPEG":
        # IMREAD_REDUCED_COLOR_2/4/8 (16, 32, 64); with IMREAD_COLOR_RGB they keep RGB order.
        flags |= {1: 0, 2: 16, 4: 32, 8: 64}[_jpeg_reduction(header, min_side)]
    return cv2.imdecode(buffer, flags)


def _decode_with_pillow(data: bytes, name: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # broken metadata: see _read_header
            with Image.open(io.BytesIO(data)) as im:
                im.seek(0)  # first frame of an animation
                return _pil_to_rgb(im, name, None)
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (unknown file format)") from None
    except Exception as exc:  # Pillow: any type on corrupt input (see the note at the top)
        raise ImageError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") from None


def _pil_to_rgb(im: Image.Image, name: str, max_pixels: int | None) -> np.ndarray:
    if max_pixels is not None:
        _check_pixels(im.width, im.height, name, max_pixels)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _array_to_rgb(np.asarray(im), name, None)
    if im.mode != "RGB":
        im = (
            im.convert("RGBA")
            if ("A" in im.mode or "transparency" in im.info)
            else im.convert("RGB")
        )
    return _array_to_rgb(np.asarray(im), name, None)


def _array_to_rgb(
    array: np.ndarray, name: str, max_pixels: int | None, *, bgr: bool = False
) -> np.ndarray:
    """Any HxW, HxWx1, HxWx3 or HxWx4 array of uint8, uint16 or float to RGB uint8.

    Arrays from callers are taken as RGB(A); arrays from OpenCV are BGR(A) (`bgr=True`).
    Alpha is composited over white, as a browser shows a transparent image.
    """
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (2, 3, 4)):
        raise ImageError(f"{name}: expected an HxW or HxWxC image array, got shape {array.shape}")
    if max_pixels is not None:
        _check_pixels(array.shape[1], array.shape[0], name, max_pixels)
    image = _to_uint8(array, name)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 2:  # gray + alpha
        gray, alpha = image[:, :, 0], image[:, :, 1]
        return _composite_on_white(cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB), alpha)
    if channels == 4:
        color = cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2RGB) if bgr else image[:, :, :3]
        return _composite_on_white(color, image[:, :, 3])
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if bgr else np.ascontiguousarray(image)


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array.astype(np.float32) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        # Floating images are taken to be in [0, 1], the convention of OpenCV and skimage.
        clean = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return (np.clip(clean, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        return np.clip(array, 0, 255).astype(np.uint8)
    raise ImageError(f"{name}: unsupported pixel type {array.dtype}")


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float32)[:, :, None] * (1.0 / 255.0)
    return (rgb.astype(np.float32) * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)


def _apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an image stored rotated/mirrored upright, per the EXIF orientation values 2..8."""
    if orientation == 2:
        return cv2.flip(image, 1)
    if orientation == 3:
        return cv2.rotate(image, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(image, 0)
    if orientation == 5:
        return cv2.transpose(image)
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(image), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return image
