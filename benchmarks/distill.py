"""Distillation: a small student with and without `--teacher` at equal epochs, over a few
temperatures and weights, and the student's images/s against the teacher's.

    .venv/bin/python benchmarks/distill.py [--epochs 4] [--teacher-epochs 4]

Data: benchmarks/defaults.py's `printed` digits (0-9 in OpenCV's Hershey fonts, 28 px,
100 train / 40 test per class), which no test uses. Teacher: EfficientNet-Lite0 from its
ImageNet weights, fine-tuned at 32 px (--teacher-size) with every default. Student:
simple_cnn from scratch at 28 px (`--augment none`, so every run sees the same images),
trained alone and with the teacher for each (temperature, weight). Accuracy: the best
weights on DATA/test.
Images/s: the model alone on PyTorch, batches of 32 prepared inputs, best of 5 rounds.

Measured figures and the machine are in docs/train.md ("Distillation").
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from defaults import run_train, write_printed_digits  # noqa: E402

STUDENT = ["--model", "simple_cnn", "--no-pretrained", "--img-size", "28", "--augment", "none",
           "--workers", "0"]  # fmt: skip
SETTINGS = [(1.0, 0.5), (4.0, 0.5), (4.0, 0.9)]  # (temperature, weight)


def images_per_second(run: Path) -> float:
    from imgcls import ImageClassifier

    classifier = ImageClassifier(str(run), backend="torch", batch_size=32)
    batch = np.stack([classifier.prepare(np.zeros((28, 28, 3), np.uint8))] * 32)
    classifier.predict_proba(batch)  # warm-up
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        classifier.predict_proba(batch)
        best = min(best, time.perf_counter() - started)
    return 32 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--teacher-size", type=int, default=32)
    args = parser.parse_args()
    print(f"# {datetime.date.today()} {platform.processor() or platform.machine()}, "
          f"student epochs {args.epochs}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_printed_digits(root / "printed")
        teacher = root / "teacher"
        result = run_train(data, teacher, "--img-size", str(args.teacher_size), "--epochs",
                           str(args.teacher_epochs), "--workers", "0")  # fmt: skip
        print(f"teacher (EfficientNet-Lite0, {args.teacher_size} px, {args.teacher_epochs} "
              f"epochs): test {result['test_accuracy']:.4f}, "
              f"{images_per_second(teacher):.0f} images/s", flush=True)  # fmt: skip
        alone = run_train(data, root / "alone", *STUDENT, "--epochs", str(args.epochs))
        print(f"student alone (simple_cnn, 28 px): test {alone['test_accuracy']:.4f}, "
              f"{alone['seconds_per_epoch']:.1f} s/epoch, "
              f"{images_per_second(root / 'alone'):.0f} images/s", flush=True)  # fmt: skip
        for temperature, weight in SETTINGS:
            out = root / f"distil-{temperature}-{weight}"
            taught = run_train(data, out, *STUDENT, "--epochs", str(args.epochs),
                               "--teacher", str(teacher), "--distill-temperature",
                               str(temperature), "--distill-weight", str(weight))  # fmt: skip
            print(f"student + teacher T={temperature} w={weight}: test "
                  f"{taught['test_accuracy']:.4f}, {taught['seconds_per_epoch']:.1f} s/epoch",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
