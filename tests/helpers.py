"""What several test modules share: paths, known ImageNet ids, the CLI in a subprocess and
small data sets drawn on the spot. (Fixtures stay in conftest.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
SAMPLES = REPO / "samples"
# Domestic-cat classes of ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat.
CAT_IDS = {"n02123045", "n02123159", "n02123394", "n02123597", "n02124075"}
ESPRESSO_ID = "n07920052"


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a subprocess that imports this checkout's src (plus `extra`)."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    return env


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """`python -m imgcls ARGS` as a user runs it, in its own process (after `prefix`, such
    as `unshare -n`), with `env` or `cli_env()`; stdout and stderr captured as text."""
    return _run([*prefix, sys.executable, "-m", "imgcls", *args], env, timeout)


def run_python(
    code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python -c CODE ARGS` in its own process, as `run_cli` runs the command line."""
    return _run([sys.executable, "-c", code, *args], env, timeout)


def _run(
    command: list[str], env: dict[str, str] | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env or cli_env()
    )


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


def write_digit_images(root: Path, per_class: int = 30, size: int = 28) -> list[tuple[Path, int]]:
    """scikit-learn's handwritten digits, upsampled to `size` px PNGs: glyphs that a mirror
    turns into other glyphs."""
    import cv2
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    samples = []
    for label in range(10):
        for i in np.flatnonzero(digits.target == label)[:per_class]:
            image = (digits.images[i] * 16).clip(0, 255).astype(np.uint8)
            path = root / str(label) / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC))
            samples.append((path, label))
    return samples


COLLAGE_CLASSES = ("red", "green", "blue", "stripes", "checks", "dots")


def write_collages(
    root: Path, count: int, size: int = 32, seed: int = 0
) -> list[tuple[str, tuple[str, ...]]]:
    """`count` PNGs root/<i>.png, each a 2x2 collage: 1-3 tiles of different classes of
    COLLAGE_CLASSES (plain colours and gray patterns, with noise), gray noise elsewhere.
    Returns (file name, its classes in tile order) per image: a multi-label data set."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    tile = size // 2
    ramp = np.arange(tile)

    def texture(name: str) -> np.ndarray:
        colours = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 210)}
        period = max(2, tile // 4)
        phase = int(rng.integers(period))
        if name in colours:
            image = np.broadcast_to(np.array(colours[name], float), (tile, tile, 3))
        elif name == "stripes":
            image = np.repeat(
                ((ramp + phase) // (period // 2 or 1) % 2 * 200 + 30)[:, None], tile, 1
            )
        elif name == "checks":
            cells = (ramp + phase) // period
            image = (cells[:, None] + cells[None, :]) % 2 * 200.0 + 30
        elif name == "dots":
            image = np.full((tile, tile), 30.0)
            for y in range(phase % period, tile, period):
                for x in range(phase % period, tile, period):
                    cv2.circle(image, (x, y), max(1, period // 4), 230.0, -1)
        else:  # background
            image = np.full((tile, tile), 128.0)
        image = np.asarray(image, float)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, 2)
        return np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        names = tuple(rng.choice(COLLAGE_CLASSES, int(rng.integers(1, 4)), replace=False))
        places = rng.permutation(4)
        tiles = [texture("background")] * 4
        for name, place in zip(names, places, strict=False):
            tiles[place] = texture(str(name))
        collage = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])
        cv2.imwrite(str(root / f"{i}.png"), cv2.cvtColor(collage, cv2.COLOR_RGB2BGR))
        rows.append((f"{i}.png", tuple(str(n) for n in names)))
    return rows
