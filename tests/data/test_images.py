"""Decoding real-world files: formats, pixel layouts, EXIF orientation, junk and bombs."""

from __future__ import annotations

import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from imgcls.data.images import EncodedImage, list_images, load_image
from imgcls.errors import ImageError

# Mean absolute difference (0..255) allowed between a lossy re-encoding and the original.
LOSSY_TOLERANCE = 4.0


@pytest.fixture(scope="module")
def reference(samples) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(samples / "espresso.jpg")), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize(
    "variant",
    [
        "jpeg",
        "png",
        "png16",
        "rgba",
        "palette",
        "cmyk",
        "progressive",
        "webp",
        "bmp",
        "tiff",
        "gif",
        "exif_rotated",
    ],
)
def test_every_format_decodes_to_the_same_rgb_pixels(espresso_variants, reference, variant):
    image = load_image(espresso_variants[variant])
    assert image.dtype == np.uint8 and image.shape == reference.shape
    if variant == "rgba":  # transparent bands composite over white
        assert (image[:8] == 255).all()
        image, expected = image[8:-8], reference[8:-8]
    else:
        expected = reference
    assert np.abs(image.astype(int) - expected).mean() < LOSSY_TOLERANCE


def test_grayscale_becomes_three_equal_channels(espresso_variants):
    image = load_image(espresso_variants["gray"])
    assert image.shape[2] == 3
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_exif_transpose(tmp_path, orientation):
    rng = np.random.default_rng(orientation)
    pixels = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"
    Image.fromarray(pixels).save(path, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert np.array_equal(load_image(path), expected)


def test_sixteen_bit_values_scale_to_eight_bit(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 3, dtype=np.uint16).reshape(8, 8, 3)
    cv2.imwrite(str(tmp_path / "ramp.png"), ramp)
    decoded = load_image(tmp_path / "ramp.png")
    expected = np.round(ramp[..., ::-1] / 257.0)
    assert np.abs(decoded.astype(int) - expected).max() <= 1


def test_gray_alpha_png_composites_over_white(tmp_path):
    la = np.zeros((10, 10, 2), np.uint8)
    la[..., 1] = 0  # fully transparent black
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    assert (load_image(tmp_path / "la.png") == 255).all()


def test_arrays_and_pil_images_are_accepted(reference):
    assert np.array_equal(load_image(reference), reference)
    assert np.array_equal(load_image(Image.fromarray(reference)), reference)
    gray = reference[..., 0]
    assert load_image(gray).shape == reference.shape
    as_float = load_image(reference.astype(np.float32) / 255.0)
    assert np.abs(as_float.astype(int) - reference).max() <= 1


def test_bytes_are_accepted(samples, reference):
    data = (samples / "espresso.jpg").read_bytes()
    assert np.array_equal(load_image(data), load_image(samples / "espresso.jpg"))


def test_named_bytes_decode_as_the_file_and_errors_give_its_name(samples):
    data = (samples / "espresso.jpg").read_bytes()
    named = EncodedImage("s3://photos/espresso.jpg", data)
    assert np.array_equal(load_image(named), load_image(samples / "espresso.jpg"))
    with pytest.raises(ImageError, match=r"^s3://photos/cut\.jpg: truncated JPEG"):
        load_image(EncodedImage("s3://photos/cut.jpg", data[: len(data) // 2]))


def test_non_ascii_path(tmp_path, samples):
    path = tmp_path / "咖啡 café.jpg"
    path.write_bytes((samples / "espresso.jpg").read_bytes())
    assert load_image(path).shape == (400, 600, 3)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_image(tmp_path / "nope.jpg")


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


def _png_bomb(width: int, height: int) -> bytes:
    """A complete, valid PNG that claims width x height: one zlib stream of zero rows."""
    raw = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    body = b"".join(raw.compress(row) for _ in range(min(height, 50))) + raw.flush()
    idat = b"IDAT" + body
    iend = b"IEND"
    return (
        _png_header(width, height)
        + struct.pack(">I", len(body))
        + idat
        + struct.pack(">I", zlib.crc32(idat))
        + struct.pack(">I", 0)
        + iend
        + struct.pack(">I", zlib.crc32(iend))
    )


JUNK = {
    "empty": b"",
    "text": b"hello, I am definitely not a picture\n" * 20,
    "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "png_header_only": _png_header(64, 64),
    "html": b"<!doctype html><html><body>404</body></html>",
}


@pytest.mark.parametrize("name", sorted(JUNK))
def test_junk_raises_image_error_naming_the_input(tmp_path, name):
    path = tmp_path / f"{name}.jpg"
    path.write_bytes(JUNK[name])
    with pytest.raises(ImageError, match=f"{name}.jpg"):
        load_image(path)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_truncated_files_raise_image_error(tmp_path, samples, suffix):
    image = cv2.imread(str(samples / "espresso.jpg"))
    ok, encoded = cv2.imencode(suffix, image)
    assert ok
    data = encoded.tobytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut"):
        load_image(path)


def test_decompression_bomb_is_refused_fast(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_bomb(40000, 40000))
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"bomb.png: refused, .*1,?600,?000,?000 pixels"):
        load_image(path)
    assert time.perf_counter() - start < 0.5
    path.write_bytes(_png_bomb(12000, 12000))  # under Pillow's own guard: ours refuses it
    with pytest.raises(ImageError, match="12000x12000 is 144,000,000 pixels, over the limit"):
        load_image(path)


def test_pixel_cap_is_configurable(samples):
    path = samples / "espresso.jpg"  # 600x400 = 240,000 pixels
    with pytest.raises(ImageError, match="over the limit"):
        load_image(path, max_pixels=100_000)
    assert load_image(path, max_pixels=240_000).shape == (400, 600, 3)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_list_images_recurses_and_skips_non_images(tmp_path, samples):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.JPG").write_bytes(b"")
    (tmp_path / "y.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("no")
    (tmp_path / ".hidden.jpg").write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["x.JPG", "y.png"]


@pytest.fixture(scope="module")
def large_jpeg(tmp_path_factory, reference) -> tuple:
    big = cv2.resize(reference, (4000, 3000), interpolation=cv2.INTER_CUBIC)
    path = tmp_path_factory.mktemp("large") / "large.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path, big


@pytest.mark.parametrize(
    ("min_side", "shape"),
    [(256, (375, 500)), (400, (750, 1000)), (1500, (1500, 2000)), (2000, (3000, 4000))],
)
def test_large_jpeg_decodes_reduced_but_never_below_min_side(large_jpeg, min_side, shape):
    path, big = large_jpeg
    image = load_image(path, min_side=min_side)
    assert image.shape[:2] == shape
    expected = cv2.resize(big, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(image.astype(int) - expected).mean() < LOSSY_TOLERANCE


def _opencv_decode(path, reduce_flag: int = 0) -> np.ndarray:
    """What `load_image` gave before libjpeg-turbo's own decoder: OpenCV's (which turns the
    image upright by its EXIF orientation itself)."""
    return cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR_RGB | reduce_flag)


@pytest.mark.parametrize("variant", ["jpeg", "cmyk", "progressive", "exif_rotated", "gray_jpeg"])
def test_jpeg_decoder_gives_opencvs_pixels_on_every_jpeg_variant(
    espresso_variants, tmp_path, variant
):
    if variant == "gray_jpeg":
        path = tmp_path / "gray.jpg"
        Image.open(espresso_variants["jpeg"]).convert("L").save(path, quality=90)
    else:
        path = espresso_variants[variant]
    image = load_image(path)
    assert np.abs(image.astype(int) - _opencv_decode(path)).max() <= 1


@pytest.mark.parametrize(("min_side", "reduce_flag"), [(256, 64), (400, 32), (1500, 16), (2000, 0)])
def test_dct_scaled_jpeg_decoding_gives_opencvs_reduced_pixels(large_jpeg, min_side, reduce_flag):
    path, _ = large_jpeg
    image = load_image(path, min_side=min_side)
    assert np.abs(image.astype(int) - _opencv_decode(path, reduce_flag)).max() <= 1


def test_jpeg_with_recoverable_damage_still_decodes_as_opencv_does(tmp_path, samples):
    data = (samples / "espresso.jpg").read_bytes()
    scan = data.find(b"\xff\xda")  # junk before a marker: libjpeg warns and decodes on
    path = tmp_path / "damaged.jpg"
    path.write_bytes(data[:scan] + b"\x00\x00\x00" + data[scan:])
    assert np.array_equal(load_image(path), _opencv_decode(path))


def test_reduced_decoding_is_only_for_jpeg(tmp_path, large_jpeg):
    _, big = large_jpeg
    cv2.imwrite(str(tmp_path / "large.png"), big[:1000, :1500])
    assert load_image(tmp_path / "large.png", min_side=100).shape[:2] == (1000, 1500)
