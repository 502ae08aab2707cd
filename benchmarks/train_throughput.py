"""Training throughput: `imgcls train` against a minimal plain-PyTorch loop, same model,
same data pipeline, same run; and whether decoding + augmentation keeps up.

    PYTHONPATH=src python benchmarks/train_throughput.py   # 8 minutes on the loaded machine

For each case the script writes a synthetic image folder (random JPEGs), then measures
training images/s of
  - imgcls:  `imgcls.training.loop.train` (images_per_s of metrics.csv: train phase of an epoch),
  - plain:   `for x, y in loader: zero_grad; cross_entropy(model(x), y).backward(); step`
             over the same DataLoader (ImageFolder + light augmentation, same workers),
  - data:    the DataLoader alone (decode + augment + collate, no model),
  - model:   the plain loop on one batch held in memory (no data loading at all).
Epoch 1 is warm-up. imgcls and plain runs alternate `--repeats` times and each figure is
the best later epoch (as timeit takes the best time: on a shared machine, interference
only ever slows a run down). Weights are random.

Measured 2026-11-25 07:22 UTC on 2 cores of an AMD EPYC (Zen 4), no GPU, torch 2.14.1,
2 torch threads, 1 loader worker, `--epochs 2 --repeats 2`; the machine was shared with
another engineer's jobs (load average ~4 on 2 cores), so everything ran 2-4x slower than
an idle machine would, and repeated measurements moved by up to ±40%:

    case                         imgcls  plain  overhead    data   model   (images/s)
    resnet18 224px batch 32         3.3    3.1    -7.6%    231.2     3.8
    simple_cnn 32px batch 32      495.9  527.6     6.0%   1854.7   783.2

Overhead of imgcls over the plain loop: within the noise of this shared machine (-7.6% and
+6.0%; the per-step extras are a loss/accuracy readout, the scheduler step and disabled
autocast/scaler calls, microseconds against steps of 60 ms and more). Re-measure on an
idle machine before quoting a figure against the 5% goal. Data loading keeps up: one
worker decodes and augments (light) 60x faster than resnet18 trains and 2.4x faster than
simple_cnn trains from memory. The whole script took 8 minutes under that load.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from imgcls.data.augment import train_transform
from imgcls.data.datasets import ImageFolder, find_splits
from imgcls.models.registry import build_model
from imgcls.training.config import TrainConfig
from imgcls.training.loop import train

CASES = [
    # (model, source image px, input px, images, batch size)
    ("resnet18", 256, 224, 64, 32),
    ("simple_cnn", 40, 32, 2048, 32),
]


def write_folder(root: Path, images: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"class_{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"{i}.jpg"), cv2.GaussianBlur(pixels, (5, 5), 0))


def imgcls_rate(
    data: Path, out: Path, model: str, size: int, batch: int, epochs: int, workers: int
):
    config = TrainConfig(
        data=str(data), out=str(out), model=model, pretrained=False, epochs=epochs,
        batch_size=batch, img_size=size, val_split=0.0, workers=workers, progress=False,
    )  # fmt: skip
    train(config)
    with open(out / "metrics.csv", newline="") as f:
        rates = [float(row["images_per_s"]) for row in csv.DictReader(f)]
    return max(rates[1:])


def plain_rates(data: Path, model_name: str, size: int, batch: int, epochs: int, workers: int):
    """(plain loop, data only, model only) images/s."""
    torch.manual_seed(0)
    splits = find_splits(data, val_split=0.0)
    model, preprocess = build_model(model_name, pretrained=False, num_classes=4, img_size=size)
    dataset = ImageFolder(splits.train, train_transform(preprocess, "light", seed=0))
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    model.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    loop = []
    for _ in range(epochs):
        started, seen = time.perf_counter(), 0
        for x, y in loader:
            step(x, y)
            seen += len(y)
        loop.append(seen / (time.perf_counter() - started))

    started, seen = time.perf_counter(), 0
    for _ in range(2):
        for _, y in loader:
            seen += len(y)
    data_rate = seen / (time.perf_counter() - started)

    x, y = next(iter(loader))
    step(x, y)  # warm-up
    steps = max(3, len(dataset) // batch)
    started = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    model_rate = steps * len(y) / (time.perf_counter() - started)
    return max(loop[1:]), data_rate, model_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per measurement")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader processes")
    parser.add_argument("--repeats", type=int, default=2, help="alternating measurements")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.workers} workers")
    print(f"{'case':<28} {'imgcls':>7} {'plain':>6} {'overhead':>9} {'data':>7} {'model':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for model, source_px, size, images, batch in CASES:
            data = Path(tmp) / f"{model}-data"
            write_folder(data, images, source_px)
            ours, plain, data_rate, model_rate = 0.0, 0.0, 0.0, 0.0
            for repeat in range(args.repeats):
                out = Path(tmp) / f"{model}-run{repeat}"
                if repeat % 2:  # alternate which goes first
                    rates = plain_rates(data, model, size, batch, args.epochs, args.workers)
                ours = max(ours, imgcls_rate(data, out, model, size, batch, args.epochs,
                                             args.workers))  # fmt: skip
                if not repeat % 2:
                    rates = plain_rates(data, model, size, batch, args.epochs, args.workers)
                plain, data_rate, model_rate = (
                    max(a, b) for a, b in zip((plain, data_rate, model_rate), rates, strict=True)
                )
            overhead = (plain - ours) / plain
            case = f"{model} {size}px batch {batch}"
            print(f"{case:<28} {ours:>7.1f} {plain:>6.1f} {overhead:>8.1%} "
                  f"{data_rate:>7.1f} {model_rate:>7.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
