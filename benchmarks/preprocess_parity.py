"""Preprocessing parity with timm's reference pipeline, and what decoding costs.

    .venv/bin/python benchmarks/preprocess_parity.py [--crops 400] [--json]

Parity: JPEG crops (300-1600 px on the longer side, quality 75-95) of real photos that no
test uses: scikit-learn's two sample photos, matplotlib's Grace Hopper, and seven
scikit-image photos (astronaut, cat, coffee, two motorcycles, Hubble, retina) read from its
wheel (`pip download scikit-image==0.26.0`, as benchmarks/defaults.py). Each crop goes
through three pipelines into the same fp32 ONNX Runtime model (efficientnet_lite0, ImageNet):
  - reference: timm's eval transform on Pillow's decode (create_transform: Resize 256
    bicubic antialiased, CenterCrop 224, Normalize);
  - before: imgcls until this change: cv2.imdecode, DCT-reduced down to the resize size,
    then INTER_AREA (INTER_LINEAR below a 1.25x shrink);
  - imgcls: `ImageClassifier.prepare` as it is now.
Printed: top-1 agreement with the reference, the largest probability gap per image (median
and worst), and decode + preprocess milliseconds per image (median of alternated rounds).

Decode: cv2.imdecode against simplejpeg (libjpeg-turbo's own API) on one 600x400 sample and
a 4000x3000 upscale of it, full and at 1/2 scale.

Measured 2026-12-08 on the 2-core AMD EPYC (Zen 4) dev VM, other work running; the figures
are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from defaults import skimage_picture  # noqa: E402

from imgcls.data.preprocess import Preprocess, crop_geometry  # noqa: E402
from imgcls.inference.classifier import ImageClassifier  # noqa: E402
from imgcls.trust.calibration import softmax  # noqa: E402

SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
)


def photos(cache: Path) -> list[np.ndarray]:
    """RGB photos that no test uses."""
    import matplotlib
    from sklearn.datasets import load_sample_images

    found = list(load_sample_images().images)
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    found.append(np.asarray(Image.open(hopper).convert("RGB")))
    for name in SKIMAGE_PHOTOS:
        found.append(cv2.cvtColor(skimage_picture(cache, name), cv2.COLOR_BGR2RGB))
    return found


def jpeg_crops(pictures: list[np.ndarray], count: int, seed: int = 0) -> list[bytes]:
    """Random crops (30-100% of the area, aspect 3:4 to 4:3), resized to 300-1600 px on
    the longer side, JPEG quality 75-95."""
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        photo = pictures[i % len(pictures)]
        height, width = photo.shape[:2]
        area = rng.uniform(0.3, 1.0) * height * width
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        h = int(min(height, np.sqrt(area / aspect)))
        w = int(min(width, np.sqrt(area * aspect)))
        y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        crop = photo[y : y + h, x : x + w]
        scale = int(rng.integers(300, 1601)) / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        crop = cv2.resize(crop, size, interpolation=interpolation)
        quality = int(rng.integers(75, 96))
        bgr = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
        crops.append(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())
    return crops


def reference_pipeline(config: Preprocess):
    from timm.data import create_transform

    transform = create_transform(
        input_size=config.input_size,
        interpolation=config.interpolation,
        crop_pct=config.crop_pct,
        mean=config.mean,
        std=config.std,
    )
    return lambda data: transform(Image.open(io.BytesIO(data)).convert("RGB")).numpy()


def before_pipeline(config: Preprocess):
    """imgcls's decode and eval transform before this change, for comparison."""
    mean = np.asarray(config.mean, np.float32)[:, None, None] * 255.0
    inv_std = 1.0 / (np.asarray(config.std, np.float32)[:, None, None] * 255.0)

    def run(data: bytes) -> np.ndarray:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        flags = cv2.IMREAD_COLOR_RGB
        for factor, reduce_flag in ((8, 64), (4, 32), (2, 16)):
            if min(height, width) // factor >= config.resize_size:
                flags |= reduce_flag
                break
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        resized_h, resized_w, top, left = crop_geometry(image.shape[:2], config)
        shrink = image.shape[0] / resized_h
        if shrink >= 1.25:
            interpolation = cv2.INTER_AREA
        elif shrink > 1:
            interpolation = cv2.INTER_LINEAR
        else:
            interpolation = cv2.INTER_CUBIC
        resized = cv2.resize(image, (resized_w, resized_h), interpolation=interpolation)
        crop = resized[top : top + config.size[0], left : left + config.size[1]]
        return (crop.transpose(2, 0, 1).astype(np.float32) - mean) * inv_std

    return run


def probabilities(classifier: ImageClassifier, inputs: list[np.ndarray]) -> np.ndarray:
    rows = [classifier.runtime(np.stack(inputs[i : i + 16])) for i in range(0, len(inputs), 16)]
    return softmax(np.concatenate(rows))


def parity(crops: list[bytes], rounds: int) -> dict[str, dict[str, float]]:
    classifier = ImageClassifier(backend="onnx")
    config = classifier.preprocess
    pipelines = {"before": before_pipeline(config), "imgcls": classifier.prepare}
    reference = probabilities(classifier, [reference_pipeline(config)(d) for d in crops])
    results = {}
    for name, run in pipelines.items():
        ours = probabilities(classifier, [run(d) for d in crops])
        gap = np.abs(ours - reference).max(axis=1)
        results[name] = {
            "top1_agreement": float((ours.argmax(1) == reference.argmax(1)).mean()),
            "gap_median": float(np.median(gap)),
            "gap_max": float(gap.max()),
        }
    timings: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(rounds):  # alternated, so that other work on the machine hits both
        for name, run in pipelines.items():
            started = time.perf_counter()
            for data in crops:
                run(data)
            timings[name].append((time.perf_counter() - started) / len(crops) * 1000.0)
    for name in pipelines:
        results[name]["ms_per_image"] = float(np.median(timings[name]))
    return results


def decode_timings(sample: Path, repeats: int = 15) -> dict[str, dict[str, float]]:
    small = sample.read_bytes()
    big = cv2.resize(cv2.imread(str(sample)), (4000, 3000), interpolation=cv2.INTER_CUBIC)
    large = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()

    def median_ms(run) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        return float(np.median(times)) * 1000.0

    cases = {
        "600x400": (small, 0, 0),
        "4000x3000": (large, 0, 0),
        "4000x3000 at 1/2": (large, 16, 2),  # IMREAD_REDUCED_COLOR_2's bit
    }
    results = {}
    for label, (data, reduce_flag, factor) in cases.items():
        buffer = np.frombuffer(data, np.uint8)
        flags = cv2.IMREAD_COLOR_RGB | reduce_flag
        size = {"min_height": 1500, "min_width": 2000} if factor else {}
        results[label] = {
            "cv2_imdecode_ms": median_ms(lambda b=buffer, f=flags: cv2.imdecode(b, f)),
            "simplejpeg_ms": median_ms(
                lambda d=data, s=size: simplejpeg.decode_jpeg(d, colorspace="RGB", **s)
            ),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "imgcls-bench")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    crops = jpeg_crops(photos(args.cache), args.crops)
    report = {
        "crops": len(crops),
        "parity": parity(crops, args.rounds),
        "decode": decode_timings(REPO / "samples" / "espresso.jpg"),
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"| pipeline ({len(crops)} crops) | top-1 agreement | gap median | gap max | ms/image |")
    print("|---|---|---|---|---|")
    for name, row in report["parity"].items():
        print(
            f"| {name} | {row['top1_agreement']:.1%} | {row['gap_median']:.4f} | "
            f"{row['gap_max']:.3f} | {row['ms_per_image']:.2f} |"
        )
    print("\n| image | cv2.imdecode ms | simplejpeg ms |\n|---|---|---|")
    for label, row in report["decode"].items():
        print(f"| {label} | {row['cv2_imdecode_ms']:.2f} | {row['simplejpeg_ms']:.2f} |")


if __name__ == "__main__":
    main()
