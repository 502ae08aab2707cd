"""Shared fixtures: the shipped sample photos and one loaded default classifier."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
# Domestic-cat classes of ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat.
CAT_IDS = {"n02123045", "n02123159", "n02123394", "n02123597", "n02124075"}
ESPRESSO_ID = "n07920052"


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory) -> Path:
    """One ONNX export cache for the session (and its subprocesses), not the user's."""
    path = tmp_path_factory.mktemp("onnx-cache")
    os.environ["IMGCLS_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def classifier():
    from imgcls import ImageClassifier

    return ImageClassifier()


def cli_env() -> dict[str, str]:
    """Environment for `python -m imgcls` subprocesses that sees this checkout's src."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def imgcls_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "imgcls", *args]


def write_format_variants(source: Path, directory: Path) -> dict[str, Path]:
    """The same photo in every format and pixel layout the decoder must handle."""
    import cv2
    import numpy as np
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    bgr = cv2.imread(str(source), cv2.IMREAD_COLOR)
    pil = Image.open(source).convert("RGB")
    paths: dict[str, Path] = {"jpeg": source}

    def out(name: str) -> Path:
        paths[name.split(".")[0]] = directory / name
        return directory / name

    cv2.imwrite(str(out("png.png")), bgr)
    cv2.imwrite(str(out("png16.png")), bgr.astype(np.uint16) * 257)
    cv2.imwrite(str(out("gray.png")), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    alpha = np.full(bgr.shape[:2], 255, np.uint8)
    alpha[:8], alpha[-8:] = 0, 0  # transparent bands: composited, not left black
    cv2.imwrite(str(out("rgba.png")), np.dstack([bgr, alpha]))
    pil.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(out("palette.png"))
    pil.convert("CMYK").save(out("cmyk.jpg"), quality=95)
    pil.save(out("progressive.jpg"), quality=92, progressive=True)
    pil.save(out("webp.webp"), quality=92)
    pil.save(out("bmp.bmp"))
    pil.save(out("tiff.tiff"))
    pil.save(out("gif.gif"))
    # Stored turned 90° counter-clockwise, with EXIF orientation 6 ("rotate 90° CW to view").
    exif = Image.Exif()
    exif[0x0112] = 6
    pil.transpose(Image.Transpose.ROTATE_90).save(out("exif_rotated.jpg"), quality=92, exif=exif)
    return paths


@pytest.fixture(scope="session")
def espresso_variants(tmp_path_factory) -> dict[str, Path]:
    return write_format_variants(SAMPLES / "espresso.jpg", tmp_path_factory.mktemp("variants"))


@pytest.fixture
def no_network(monkeypatch) -> list[str]:
    """Block every outgoing connection in this process; returns the attempts made."""
    import socket

    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def write_photo_crops(root: Path, per_class: int, size: int = 96, seed: int = 0) -> Path:
    """root/<cat|espresso|rocket>/*.jpg: random square crops of the three sample photos,
    a small photo data set that ImageNet features separate and random weights do not."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    for name in ("cat", "espresso", "rocket"):
        photo = cv2.imread(str(SAMPLES / f"{name}.jpg"))
        (root / name).mkdir(parents=True, exist_ok=True)
        height, width = photo.shape[:2]
        for i in range(per_class):
            side = int(min(height, width) * rng.uniform(0.5, 0.8))
            y, x = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
            crop = photo[y : y + side, x : x + side]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(root / name / f"{i}.jpg"), crop)
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A simple_cnn run directory trained for a few seconds on 32 px photo crops: a real
    run to load, serve and tamper with, at a fraction of the default model's cost."""
    from imgcls.train import TrainConfig, train

    root = tmp_path_factory.mktemp("tiny_run")
    write_photo_crops(root / "data", per_class=12, size=32)
    out = root / "run"
    train(
        TrainConfig(
            data=str(root / "data"), out=str(out), model="simple_cnn", pretrained=False,
            epochs=2, batch_size=8, img_size=32, lr=3e-3, augment="none", workers=0,
            progress=False,
        )
    )  # fmt: skip
    return out
