"""Fuzzing the decoder: random bytes and mutated real images (truncated, bit-flipped,
absurd dimensions written into PNG/JPEG/BMP/GIF/TIFF/WebP headers). Whatever comes in,
only ImageError (or FileNotFoundError for a path) escapes, and memory stays bounded."""

from __future__ import annotations

import io
import resource
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import SAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imgcls.data.images import decode_image_bytes, load_image
from imgcls.errors import ImageError

MAX_PIXELS = 1_000_000  # 3 MB as RGB: a decode holds a few such buffers at most
MEMORY_GROWTH_LIMIT_MB = 50
FUZZ = settings(
    max_examples=150,
    deadline=None,  # two shared cores: timing is not what is under test
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
ABSURD = [0, 1, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF]


def _seeds() -> dict[str, bytes]:
    """The espresso photo at 48x40 in every format the mutations target."""
    photo = Image.open(SAMPLES / "espresso.jpg").convert("RGB").resize((48, 40))
    seeds = {}
    for fmt, options in (
        ("PNG", {}),
        ("JPEG", {"quality": 90}),
        ("BMP", {}),
        ("GIF", {}),
        ("TIFF", {}),
        ("WEBP", {"quality": 80}),
    ):
        buffer = io.BytesIO()
        photo.save(buffer, fmt, **options)
        seeds[fmt] = buffer.getvalue()
    return seeds


SEEDS = _seeds()


def _decode_or_refuse(data: bytes) -> None:
    """The property: a decoded RGB uint8 image, or an ImageError naming the input."""
    try:
        image = decode_image_bytes(data, name="<fuzz>", max_pixels=MAX_PIXELS)
    except ImageError as exc:
        assert str(exc).startswith("<fuzz>: ")
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] * image.shape[1] <= MAX_PIXELS


def _put(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    size = struct.calcsize(fmt)
    value &= (1 << (8 * size)) - 1
    if fmt[-1].islower():  # signed field: wrap into range
        value -= (1 << (8 * size)) if value >= 1 << (8 * size - 1) else 0
    return data[:offset] + struct.pack(fmt, value) + data[offset + size :]


def _with_dimensions(fmt: str, width: int, height: int) -> bytes:
    """The seed of `fmt` with (width, height) written into its header fields."""
    data = SEEDS[fmt]
    if fmt == "PNG":  # IHDR data at 16; rewrite its CRC so the chunk itself stays valid
        data = _put(_put(data, 16, ">I", width), 20, ">I", height)
        return data[:29] + struct.pack(">I", zlib.crc32(data[12:29])) + data[33:]
    if fmt == "JPEG":  # SOF0: marker, length, precision, height, width
        sof = data.index(b"\xff\xc0")
        return _put(_put(data, sof + 5, ">H", height), sof + 7, ">H", width)
    if fmt == "BMP":  # BITMAPINFOHEADER: signed width and height
        return _put(_put(data, 18, "<i", width), 22, "<i", height)
    if fmt == "GIF":  # logical screen, then the first image descriptor
        data = _put(_put(data, 6, "<H", width), 8, "<H", height)
        image = data.index(b"\x2c", 13)
        return _put(_put(data, image + 5, "<H", width), image + 7, "<H", height)
    if fmt == "TIFF":  # tags 256/257 of the first IFD
        (ifd,) = struct.unpack_from("<I", data, 4)
        (count,) = struct.unpack_from("<H", data, ifd)
        for i in range(count):
            entry = ifd + 2 + 12 * i
            tag, kind = struct.unpack_from("<HH", data, entry)
            if tag in (256, 257):
                field = "<H" if kind == 3 else "<I"
                data = _put(data, entry + 8, field, width if tag == 256 else height)
        return data
    # WEBP (lossy VP8): 14-bit width and height after the key-frame start code
    start = data.index(b"\x9d\x01\x2a")
    return _put(_put(data, start + 3, "<H", width), start + 5, "<H", height)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux clear_refs), so growth is measured from now."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return _peak_rss_mb()


CAN_MEASURE_PEAK = _reset_peak_rss()


def _decode_within_memory(data: bytes) -> None:
    """`_decode_or_refuse`, failing when this one decode raised the process's peak RSS by
    more than the limit (measured per input: hypothesis's own bookkeeping grows too)."""
    if not CAN_MEASURE_PEAK:  # no /proc/self/clear_refs: the property alone
        _decode_or_refuse(data)
        return
    _reset_peak_rss()
    before = _vm_hwm_mb()
    try:
        _decode_or_refuse(data)
    finally:
        growth = _vm_hwm_mb() - before
        assert growth < MEMORY_GROWTH_LIMIT_MB, f"peak RSS grew {growth:.0f} MB on one input"


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_decode_or_raise_image_error(data: bytes):
    _decode_within_memory(data)


@FUZZ
@given(
    st.sampled_from(sorted(SEEDS)),
    st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"GIF89a", b"II*\0"]),
    st.binary(max_size=512),
)
def test_real_magic_numbers_followed_by_junk(fmt: str, magic: bytes, junk: bytes):
    _decode_within_memory(magic + junk)
    _decode_within_memory(SEEDS[fmt][:32] + junk)  # a real header, then nonsense


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.data())
def test_truncated_images_are_refused_or_decoded(fmt: str, data):
    seed = SEEDS[fmt]
    _decode_within_memory(seed[: data.draw(st.integers(0, len(seed) - 1))])


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.lists(st.integers(0, 10_000), min_size=1, max_size=8))
def test_bit_flips_in_headers_and_bodies(fmt: str, positions: list[int]):
    data = bytearray(SEEDS[fmt])
    for position in positions:
        # Most flips land in the first 64 bytes, where the header is parsed.
        index = position % 64 if position % 3 else position % len(data)
        data[index] ^= 1 << (position % 8)
    _decode_within_memory(bytes(data))


@FUZZ
@given(
    st.sampled_from(sorted(SEEDS)),
    st.one_of(st.sampled_from(ABSURD), st.integers(0, 2**32 - 1)),
    st.one_of(st.sampled_from(ABSURD), st.integers(0, 2**32 - 1)),
)
def test_absurd_dimensions_in_headers_never_allocate_them(fmt: str, width: int, height: int):
    _decode_within_memory(_with_dimensions(fmt, width, height))


def test_the_dimension_mutation_reaches_the_header():
    # The mutation is real: each format then declares the size that was written.
    for fmt in SEEDS:
        data = _with_dimensions(fmt, 123, 45)
        assert Image.open(io.BytesIO(data)).size == (123, 45), fmt


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(st.binary(max_size=2048))
def test_load_image_from_a_file_raises_only_image_error(tmp_path_factory, data: bytes):
    path = tmp_path_factory.mktemp("fuzz") / "input.jpg"
    path.write_bytes(data)
    try:
        load_image(path, max_pixels=MAX_PIXELS)
    except ImageError as exc:
        assert str(path) in str(exc)
    with pytest.raises(FileNotFoundError):
        load_image(path.with_name("missing.jpg"))


# Found by the fuzzing above, kept as fixed examples.
@pytest.mark.parametrize(
    ("fmt", "width", "height"), [("BMP", 2, 1_058_671), ("TIFF", 1_866_733, 1)]
)
def test_a_side_over_opencvs_limit_is_an_image_error(fmt: str, width: int, height: int):
    # Under the pixel cap, but OpenCV asserts on sides over 2^20 (cv2.error escaped before).
    with pytest.raises(ImageError, match="cannot decode image"):
        decode_image_bytes(_with_dimensions(fmt, width, height), name="x", max_pixels=4_000_000)


@pytest.mark.skipif(not CAN_MEASURE_PEAK, reason="needs /proc/self/clear_refs")
def test_a_png_over_the_cap_is_refused_before_any_pixel_is_decoded():
    # Reading the EXIF orientation of a PNG made Pillow decode it: 106 MB for this header.
    _decode_within_memory(_with_dimensions("PNG", 37_094_202, 1))
    with pytest.raises(ImageError, match="over the limit"):
        decode_image_bytes(_with_dimensions("PNG", 37_094_202, 1), name="x", max_pixels=MAX_PIXELS)


def test_a_tiff_tag_of_the_wrong_type_is_an_image_error():
    # One bit flipped at byte 72 gives a tag Pillow reads as a rational: TypeError escaped.
    data = bytearray(SEEDS["TIFF"])
    data[72] ^= 1
    with pytest.raises(ImageError, match="cannot decode image"):
        decode_image_bytes(bytes(data), name="x")
