"""The defaults a new user gets: `imgcls train` with no tuning flags, on data sets that no
test in the repository uses, against the settings an expert would pass by hand.

    .venv/bin/python benchmarks/defaults.py [--only digits,printed,textures,photos,mirror,heads,ddp]

Each configuration runs the CLI as a user would (`imgcls train DATA --out RUN --json`,
`torchrun ... -m imgcls train` for DDP) and reads test accuracy from its JSON (the best
weights on DATA/test) and the seconds per epoch from the run's metrics.csv. The data are
made here, nothing is downloaded but one package from PyPI:
  - digits:   scikit-learn's 1,797 handwritten digits (8x8, upsampled to 28 px), 80/20
              train/test, `--model simple_cnn --no-pretrained --img-size 28` (issue 14's set);
  - printed:  digits 0-9 printed in OpenCV's eight Hershey fonts, random size, stroke,
              place and tilt, 28 px; 100 train / 40 test per class; simple_cnn as above;
  - textures: brick, grass and gravel crops from scikit-image's sample images (read from its
              wheel, `pip download scikit-image==0.26.0`): train crops from the top 60% of
              each picture, test crops from the bottom 40%; 120 train / 40 test per class;
  - photos:   crops of four scikit-image photos (cat, coffee, astronaut, moon), 40 / 20;
  - mirror:   crops of a motorcycle seen from its left and from its right: classes a
              mirror turns into each other, 40 / 20 per class;
  - heads:    logreg, svm, mlp and knn on frozen EfficientNet-Lite0 features of textures
              and photos;
  - ddp:      the digits run for 3 epochs in 1 and in 2 processes (torchrun, gloo).
Fine-tuning is EfficientNet-Lite0 from its ImageNet weights with every default (10 epochs).

Measured 2026-12-02 on the 2-core AMD EPYC (Zen 4) dev VM, no GPU, torch 2.14.1; the table
is in docs/train.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np

SKIMAGE = "scikit-image==0.26.0"
SECTIONS = ("digits", "printed", "textures", "photos", "mirror", "heads", "ddp")


def write_digits(root: Path) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    for rank, i in enumerate(order):
        split = "test" if rank < len(order) // 5 else "train"
        image = (digits.images[i] * 16).clip(0, 255).astype(np.uint8)
        image = cv2.resize(image, (28, 28), interpolation=cv2.INTER_CUBIC)
        _write(root / split / str(digits.target[i]) / f"{i}.png", image)
    return root


def write_printed_digits(root: Path, train: int = 100, test: int = 40) -> Path:
    fonts = [
        cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX,
        cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL,
        cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_SCRIPT_COMPLEX,
    ]  # fmt: skip
    rng = np.random.default_rng(1)
    for split, count in (("train", train), ("test", test)):
        for digit in range(10):
            for i in range(count):
                font = int(rng.choice(fonts)) | (cv2.FONT_ITALIC if rng.random() < 0.3 else 0)
                thickness = int(rng.integers(1, 5))
                (w, h), _ = cv2.getTextSize(str(digit), font, 1.0, thickness)
                scale = rng.uniform(30, 44) / h
                (w, h), _ = cv2.getTextSize(str(digit), font, scale, thickness)
                canvas = np.zeros((64, 64), np.uint8)
                x = (64 - w) // 2 + int(rng.integers(-4, 5))
                y = (64 + h) // 2 + int(rng.integers(-4, 5))
                cv2.putText(canvas, str(digit), (x, y), font, scale, 255, thickness, cv2.LINE_AA)
                tilt = cv2.getRotationMatrix2D((32, 32), rng.uniform(-10, 10), 1.0)
                canvas = cv2.warpAffine(canvas, tilt, (64, 64))
                image = cv2.resize(canvas, (28, 28), interpolation=cv2.INTER_AREA)
                _write(root / split / str(digit) / f"{i}.png", image)
    return root


def skimage_picture(cache: Path, name: str) -> np.ndarray:
    """A sample picture from scikit-image's wheel (BGR), without installing the package."""
    wheels = sorted(cache.glob("scikit_image-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), SKIMAGE],
            check=True,
        )
        wheels = sorted(cache.glob("scikit_image-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        data = wheel.read(f"skimage/data/{name}")
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def write_crops(
    root: Path,
    pictures: dict[str, np.ndarray],
    train: int,
    test: int,
    size: int = 96,
    split_rows: bool = False,
) -> Path:
    """root/{train,test}/<class>/*.jpg: random square crops of each picture. With
    `split_rows`, train crops come from the top 60% of the picture and test crops from the
    bottom 40% (textures: no test pixel was seen in training)."""
    rng = np.random.default_rng(2)
    for name, picture in pictures.items():
        height, width = picture.shape[:2]
        for split, count in (("train", train), ("test", test)):
            top, bottom = 0, height
            if split_rows:
                top, bottom = (
                    (0, int(height * 0.6)) if split == "train" else (int(height * 0.6), height)
                )
            rows = bottom - top
            for i in range(count):
                side = int(min(rows, width) * rng.uniform(0.4, 0.9))
                y = top + int(rng.integers(0, rows - side + 1))
                x = int(rng.integers(0, width - side + 1))
                crop = cv2.resize(picture[y : y + side, x : x + side], (size, size),
                                  interpolation=cv2.INTER_AREA)  # fmt: skip
                _write(root / split / name / f"{i}.jpg", crop)
    return root


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)


def run_train(data: Path, out: Path, *args: str, processes: int = 1) -> dict:
    """`imgcls train DATA --out OUT ARGS --json` (under torchrun for processes > 1); its
    JSON, the seconds per epoch and the augmentation it chose."""
    env = dict(os.environ, OMP_NUM_THREADS="1") if processes > 1 else None
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc_per_node={processes}", "-m", "imgcls"]
        if processes > 1 else [sys.executable, "-m", "imgcls"]
    )  # fmt: skip
    command = [*launcher, "train", str(data), "--out", str(out), *args, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)
    with open(out / "metrics.csv", newline="") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    config = json.loads((out / "config.json").read_text())
    result["seconds_per_epoch"] = float(np.median(seconds))
    result["augmentation"] = config.get("augmentation", {})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: temp)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "imgcls-bench")
    args = parser.parse_args()
    sections = args.only.split(",")
    work = args.out or Path(tempfile.mkdtemp(prefix="imgcls-defaults-"))
    args.cache.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    machine = platform.processor() or platform.machine()
    print(f"# imgcls defaults, {now:%Y-%m-%d %H:%M} UTC, {machine}, {os.cpu_count()} cores")
    print(f"# work folder {work}")
    print("| data | configuration | augmentation chosen | test accuracy | s/epoch | total s |")
    print("|---|---|---|---|---|---|")

    def report(data_name: str, label: str, result: dict) -> None:
        aug = result.get("augmentation") or {}
        chosen = (
            f"{aug['preset']}, {aug['crop']}, flip {'on' if aug['hflip'] else 'off'}"
            if aug
            else "-"
        )
        accuracy, per_epoch = result["test_accuracy"], result["seconds_per_epoch"]
        cells = f"{accuracy:.4f} | {per_epoch:.1f} | {result['seconds']:.0f}"
        print(f"| {data_name} | {label} | {chosen} | {cells} |", flush=True)

    cnn = ("--model", "simple_cnn", "--no-pretrained", "--img-size", "28")
    if "digits" in sections:
        data = write_digits(work / "digits")
        report("digits", "simple_cnn, defaults", run_train(data, work / "r-digits", *cnn))
        report("digits", "simple_cnn, --augment none",
               run_train(data, work / "r-digits-none", *cnn, "--augment", "none"))  # fmt: skip
        report("digits", "simple_cnn, --hflip (forced)",
               run_train(data, work / "r-digits-flip", *cnn, "--hflip"))  # fmt: skip
    if "printed" in sections:
        data = write_printed_digits(work / "printed")
        report("printed digits", "simple_cnn, defaults", run_train(data, work / "r-printed", *cnn))
        report("printed digits", "simple_cnn, --augment none",
               run_train(data, work / "r-printed-none", *cnn, "--augment", "none"))  # fmt: skip
    textures = {n: skimage_picture(args.cache, f"{n}.png") for n in ("brick", "grass", "gravel")}
    photo_names = {"cat": "chelsea.png", "coffee": "coffee.png", "astronaut": "astronaut.png",
                   "moon": "moon.png"}  # fmt: skip
    photos = {k: skimage_picture(args.cache, v) for k, v in photo_names.items()}
    texture_data = write_crops(work / "textures", textures, 120, 40, split_rows=True)
    photo_data = write_crops(work / "photos", photos, 40, 20)
    if "textures" in sections:
        report("textures", "fine-tune, defaults", run_train(texture_data, work / "r-textures"))
    if "photos" in sections:
        report("photos", "fine-tune, defaults", run_train(photo_data, work / "r-photos"))
    if "mirror" in sections:
        sides = {n: skimage_picture(args.cache, f"motorcycle_{n}.png") for n in ("left", "right")}
        data = write_crops(work / "mirror", sides, 40, 20)
        report("mirror", "fine-tune, defaults", run_train(data, work / "r-mirror"))
        report("mirror", "fine-tune, --no-hflip",
               run_train(data, work / "r-mirror-noflip", "--no-hflip"))  # fmt: skip
    if "heads" in sections:
        for name, data in (("textures", texture_data), ("photos", photo_data)):
            for head in ("logreg", "svm", "mlp", "knn"):
                result = run_train(data, work / f"r-{name}-{head}", "--classifier", head)
                report(name, f"--classifier {head}", result)
    if "ddp" in sections:
        data = work / "digits" if (work / "digits").is_dir() else write_digits(work / "digits")
        for processes in (1, 2):
            result = run_train(data, work / f"r-ddp{processes}", *cnn, "--epochs", "3",
                               processes=processes)  # fmt: skip
            report("digits", f"simple_cnn, 3 epochs, {processes} process(es)", result)


if __name__ == "__main__":
    main()
