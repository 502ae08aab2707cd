"""Softmax fine-tuning against classical heads on frozen features, on one data set.

Data: scikit-learn's bundled handwritten digits (1,797 images of 8x8, 10 classes), written
as PNG folders at 64x64 and split 60/20/20 (train/val/test, stratified, seed 0). Nothing is
downloaded. Backbone: EfficientNet-Lite0 with its ImageNet weights (input 64 px here, as the
digits are tiny). Each model is trained with `imgcls train` and scored with
`imgcls evaluate` on the test split.

    .venv/bin/python benchmarks/heads_vs_finetune.py [--epochs 5] [--out /tmp/heads-bench]

Measured on a 2-core AMD EPYC (Zen 4), no GPU: the table is in docs/train.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from imgcls import ImageClassifier
from imgcls.evaluate import evaluate, find_labelled_images
from imgcls.training.config import TrainConfig
from imgcls.training.loop import train


def write_digits(root: Path, size: int = 64) -> Path:
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    index = np.arange(len(images))
    train_idx, rest = train_test_split(index, test_size=0.4, stratify=digits.target, random_state=0)
    val_idx, test_idx = train_test_split(
        rest, test_size=0.5, stratify=digits.target[rest], random_state=0
    )
    for split, indices in (("train", train_idx), ("val", val_idx), ("test", test_idx)):
        for i in indices:
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            big = cv2.resize(images[i], (size, size), interpolation=cv2.INTER_NEAREST)
            cv2.imwrite(str(folder / f"{i}.png"), big)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs of softmax fine-tuning")
    parser.add_argument("--out", type=Path, default=Path("/tmp/heads-bench"))
    args = parser.parse_args()
    data = write_digits(args.out / "digits")
    rows = []
    for classifier in ("softmax", "logreg", "svm", "mlp", "knn"):
        run = args.out / "runs" / classifier
        extra = {"epochs": args.epochs, "lr": 1e-3} if classifier == "softmax" else {}
        started = time.perf_counter()
        train(
            TrainConfig(
                data=str(data),
                out=str(run),
                classifier=classifier,
                img_size=64,
                progress=False,
                **extra,
            )  # fmt: skip
        )
        seconds = time.perf_counter() - started
        metrics = evaluate(ImageClassifier(str(run)), find_labelled_images(data, "test")).metrics()
        rows.append((classifier, metrics["accuracy"], metrics["macro_f1"], seconds))
        print(f"{classifier}: test accuracy {metrics['accuracy']:.4f}, {seconds:.0f} s", flush=True)
    print("\n| classifier | test accuracy | macro F1 | train time (s) |")
    print("|---|---|---|---|")
    for classifier, accuracy, f1, seconds in rows:
        print(f"| {classifier} | {accuracy:.4f} | {f1:.4f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
