"""Multi-label: fine-tuning against a logreg head, on collages with 1-3 labels each.

Data: the test suite's collage maker (`tests/helpers.py`, `write_collages`), larger: 2x2
tiles of three plain colours and three gray patterns (red, green, blue, stripes, checks,
dots; each tile with noise), 1-3 classes an image and gray noise in the other tiles. A
LABELS.csv with a split column (train / val / test). Nothing is downloaded.

Each model is trained as a user would (`imgcls train LABELS.csv --out RUN --json`, timed
around the whole command) and scored with `imgcls evaluate RUN LABELS.csv --json` on the
test rows:
  - fine-tune: EfficientNet-Lite0 from its ImageNet weights, every layer, every default
    but `--epochs` and `--img-size`;
  - logreg:    `--classifier logreg` (one-vs-rest) on the frozen backbone's features;
  - asl (`--runs asl`): the fine-tuning with the asymmetric loss (Ridnik et al., "Asymmetric
    Loss for Multi-Label Classification", 2021; gamma- 4, gamma+ 0, clip 0.05, averaged
    like BCE) in place of binary cross-entropy, trained in this process: the measurement
    that decides whether imgcls offers it.

    .venv/bin/python benchmarks/multilabel.py [--out DIR] [--figures docs/img]
        [--runs fine-tune,logreg,asl]

`--figures` copies a sample of the collages and the fine-tuned run's pr_curves.png and
false_negatives.png there (the pictures of docs/train.md).

Measured 2026-12-03 on the 2-core Intel Xeon (AVX-512) dev VM, no GPU, torch 2.14.1, shared
with three other engineers' jobs (load average 2-4 on 2 cores): compare the scores, read
the seconds as an order of magnitude. Results are in docs/train.md ("Multi-label").
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the collage maker of the test suite

from helpers import write_collages  # noqa: E402


def write_data(root: Path, train: int, val: int, test: int, size: int) -> Path:
    """root/img/*.png and root/labels.csv (path, labels, split)."""
    rows = write_collages(root / "img", train + val + test, size=size, seed=1)
    splits = ["train"] * train + ["val"] * val + ["test"] * test
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "split"])
        for (name, labels), split in zip(rows, splits, strict=True):
            writer.writerow([f"img/{name}", " ".join(labels), split])
    return root / "labels.csv"


def imgcls(*args: str) -> tuple[dict, float]:
    """`python -m imgcls ARGS --json`: its JSON and the wall-clock seconds it took."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "imgcls", *args, "--json"], capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"imgcls {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout), seconds


def asymmetric_loss(gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05):
    """ASL as its paper defines it: focusing on positives and negatives apart, and easy
    negatives (probability under `clip`) dropped by shifting their probability."""
    import torch

    class AsymmetricLoss(torch.nn.Module):
        def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            p = torch.sigmoid(logits.float())
            shifted = (p - clip).clamp(min=0)
            positive = targets * (1 - p) ** gamma_pos * torch.log(p.clamp(min=1e-8))
            negative = (1 - targets) * shifted**gamma_neg * torch.log((1 - shifted).clamp(min=1e-8))
            return -(positive + negative).mean()

    return AsymmetricLoss()


def train_with_asl(labels: Path, out: Path, epochs: int, size: int) -> float:
    """The fine-tuning run with ASL for its loss; returns the seconds it took."""
    import imgcls.training.loop as training

    training.make_criterion = lambda config, splits: asymmetric_loss()
    started = time.perf_counter()
    config = training.TrainConfig(data=str(labels), out=str(out), epochs=epochs, img_size=size)
    training.train(config)
    return time.perf_counter() - started


def sample_sheet(labels: Path, out: Path, count: int = 8) -> None:
    """The first `count` training collages side by side, their labels under each."""
    with open(labels, newline="") as f:
        rows = list(csv.DictReader(f))[:count]
    tiles = []
    for row in rows:
        image = cv2.imread(str(labels.parent / row["path"]))
        caption = np.full((22, image.shape[1], 3), 255, np.uint8)
        cv2.putText(caption, row["labels"], (2, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1)
        tiles.append(np.vstack([image, caption]))
    gap = np.full((tiles[0].shape[0], 6, 3), 255, np.uint8)
    sheet = np.hstack([part for tile in tiles for part in (tile, gap)][:-1])
    cv2.imwrite(str(out), sheet, [cv2.IMWRITE_JPEG_QUALITY, 85])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/multilabel-bench"))
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--val", type=int, default=150)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--size", type=int, default=96, help="collage side, pixels")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--figures", type=Path, help="copy the docs' pictures here")
    parser.add_argument("--runs", default="fine-tune,logreg", help="of fine-tune,logreg,asl")
    args = parser.parse_args()

    labels = args.out / "data" / "labels.csv"
    if not labels.is_file():  # the same data for a later --asl run
        labels = write_data(args.out / "data", args.train, args.val, args.test, args.size)
    size = ["--img-size", str(args.size)]
    runs = {
        "fine-tune": ["--epochs", str(args.epochs), *size],
        "logreg": ["--classifier", "logreg", *size],
    }
    print(f"{args.train} / {args.val} / {args.test} collages of {args.size} px; "
          f"fine-tuning {args.epochs} epochs")  # fmt: skip
    print("| model | test mAP | micro-F1 | subset accuracy | Hamming loss | train (s) |")
    print("|---|---|---|---|---|---|")
    chosen = args.runs.split(",")
    for name, flags in runs.items():
        if name not in chosen:
            continue
        run = args.out / name
        _, seconds = imgcls("train", str(labels), "--out", str(run), *flags)
        report, _ = imgcls("evaluate", str(run), str(labels), "--out", str(run / "report"))
        cells = [f"{report[k]:.4f}" for k in ("mAP", "micro_f1", "subset_accuracy", "hamming_loss")]
        print(f"| {name} | {' | '.join(cells)} | {seconds:.0f} |", flush=True)
    if "asl" in chosen:
        run = args.out / "fine-tune-asl"
        seconds = train_with_asl(labels, run, args.epochs, args.size)
        report, _ = imgcls("evaluate", str(run), str(labels))
        cells = [f"{report[k]:.4f}" for k in ("mAP", "micro_f1", "subset_accuracy", "hamming_loss")]
        print(f"| fine-tune, ASL | {' | '.join(cells)} | {seconds:.0f} |", flush=True)
    if args.figures is not None:
        args.figures.mkdir(parents=True, exist_ok=True)
        sample_sheet(labels, args.figures / "multilabel-collages.jpg")
        # At most 700 px wide; the noisy pictures as JPEG, the curves as PNG.
        for name, kind in (("pr_curves", ".png"), ("false_negatives", ".jpg")):
            image = cv2.imread(str(args.out / "fine-tune" / "report" / f"{name}.png"))
            scale = min(1.0, 700 / image.shape[1])
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(args.figures / f"multilabel-{name}{kind}"), image)


if __name__ == "__main__":
    main()
