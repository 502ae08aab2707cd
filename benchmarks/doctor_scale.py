"""How fast `imgcls doctor` checks a large data set: images/s end to end (list, read, hash,
decode, perceptual hashes, exact and near-duplicate search, warnings).

    PYTHONPATH=src nice -n 15 python benchmarks/doctor_scale.py --images 20000

Writes a generated train/val/test data set of small JPEGs (64-256 px, random gradients and
shapes: distinct pictures) with a known number of planted problems — byte copies, resized
and recompressed copies, val/test leaks and truncated files — times `doctor.diagnose` on
it and checks that every planted problem was found. Generation is not timed.

Measured: see docs/doctor.md (the figure, the machine and its load at the time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from imgcls.doctor.checks import diagnose

CLASSES = 10
PLANTED = 50  # of each kind of problem


def _picture(rng: np.random.Generator) -> np.ndarray:
    """A random gradient with random filled shapes, 64-256 px a side."""
    height, width = (int(v) for v in rng.integers(64, 257, 2))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    a, b, c = rng.uniform(-1, 1, 3)
    base = (a * x / width + b * y / height + c) * 127 + 128
    image = np.dstack([base * rng.uniform(0.3, 1.0) for _ in range(3)]).clip(0, 255)
    image = image.astype(np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        if rng.random() < 0.5:
            cv2.circle(image, center, int(rng.integers(5, max(6, width // 3))), colour, -1)
        else:
            corner = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.rectangle(image, center, corner, colour, -1)
    return image


def generate(root: Path, count: int, seed: int = 0) -> dict[str, int]:
    """`count` image files under root/{train,val,test}/class_k/ with planted problems."""
    rng = np.random.default_rng(seed)
    shutil.rmtree(root, ignore_errors=True)
    written: list[Path] = []
    distinct = count - 4 * PLANTED
    for i in range(distinct):
        split = "train" if i % 10 < 8 else ("val" if i % 10 == 8 else "test")
        folder = root / split / f"class_{(i // 10) % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:06d}.jpg"
        cv2.imwrite(str(path), _picture(rng), [cv2.IMWRITE_JPEG_QUALITY, 90])
        written.append(path)
    train = [p for p in written if p.parts[-3] == "train"]
    for k in range(PLANTED):
        source = train[k]
        shutil.copy(source, source.with_name(f"copy_{k}.jpg"))  # exact duplicate
        image = cv2.imread(str(source))
        smaller = cv2.resize(image, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(source.with_name(f"resized_{k}.jpg")), smaller,
                    [cv2.IMWRITE_JPEG_QUALITY, 50])  # fmt: skip
        leak = root / "test" / source.parent.name / f"leak_{k}.jpg"
        shutil.copy(train[PLANTED + k], leak)  # a training image in the test split
        data = train[2 * PLANTED + k].read_bytes()
        train[2 * PLANTED + k].with_name(f"cut_{k}.jpg").write_bytes(data[: len(data) // 2])
    return {"files": count, "planted_each": PLANTED}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="files to generate")
    parser.add_argument("--out", type=Path, default=Path("/tmp/imgcls_doctor_scale"))
    parser.add_argument("--workers", type=int, default=None, help="doctor threads")
    parser.add_argument("--keep", action="store_true", help="reuse an existing data set")
    args = parser.parse_args()

    if not (args.keep and args.out.is_dir()):
        started = time.perf_counter()
        generate(args.out, args.images)
        print(f"generated {args.images} files in {time.perf_counter() - started:.0f}s")
    report = diagnose(args.out, workers=args.workers)
    leaks = sum(1 for g in report.leaks if any("leak_" in p for p in g["paths"]))
    copies = sum(1 for g in report.duplicates if any("copy_" in p for p in g["paths"]))
    resized = sum(1 for g in report.near_duplicates if any("resized_" in p for p in g["paths"]))
    cut = sum(1 for c in report.corrupt if "cut_" in c["path"])
    summary = {
        "files": report.num_files,
        "seconds": round(report.seconds, 1),
        "images_per_s": round(report.images_per_s, 1),
        "workers": args.workers or min(8, os.cpu_count() or 1),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "found": {"copies": copies, "resized": resized, "leaks": leaks, "truncated": cut},
        "planted_each": PLANTED,
        "duplicate_groups": len(report.duplicates),
        "near_duplicate_groups": len(report.near_duplicates),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
