"""`imgcls tune` against the defaults: on data sets no test uses, the default `imgcls train`
and the best of `imgcls tune --trials N` at equal epochs; test accuracy (the best weights
on DATA/test, which no trial sees) and wall time.

    .venv/bin/python benchmarks/tune.py [--trials 12] [--epochs 4] [--only printed,textures]

The data are made by benchmarks/defaults.py's writers: `printed` (digits 0-9 in OpenCV's
Hershey fonts, 28 px, 100 train / 40 test per class) and `textures` (brick, grass and
gravel crops of scikit-image's sample pictures, read from its wheel, 48 px, 120 / 40 per
class; test crops from rows no train crop saw). Both train simple_cnn from scratch, so
the search space is the default one without pretrained weights: learning rate, weight
decay, augmentation preset and label smoothing (heads and a frozen backbone need
pretrained features). Each trial holds out 20% of DATA/train for validation, as the
default run does; tune picks on that validation score only.

Measured figures and the machine are in docs/train.md ("Tuning").
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from defaults import run_train, skimage_picture, write_crops, write_printed_digits  # noqa: E402

SCRATCH = ["--model", "simple_cnn", "--no-pretrained", "--workers", "0"]
DATA = {
    "printed": (lambda root, cache: write_printed_digits(root), ["--img-size", "28"]),
    "textures": (
        lambda root, cache: write_crops(
            root,
            {name: skimage_picture(cache, f"{name}.png") for name in ("brick", "grass", "gravel")},
            train=120, test=40, size=48, split_rows=True,
        ),
        ["--img-size", "48"],
    ),
}  # fmt: skip


def tune_best(data: Path, out: Path, trials: int, epochs: int, size_args: list[str]) -> dict:
    command = [sys.executable, "-m", "imgcls", "tune", str(data), "--out", str(out),
               "--trials", str(trials), "--epochs", str(epochs), *SCRATCH, *size_args,
               "--json"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout)
    report["seconds"] = time.perf_counter() - started
    return report


def best_test_accuracy(data: Path, best_run: Path) -> float:
    """The best trial's weights on DATA/test (no trial saw it)."""
    done = subprocess.run(
        [sys.executable, "-m", "imgcls", "evaluate", str(best_run), str(data), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--only", default=",".join(DATA))
    args = parser.parse_args()
    print(f"# {datetime.date.today()} {platform.processor() or platform.machine()}, "
          f"trials {args.trials}, epochs {args.epochs}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in args.only.split(","):
            write, size_args = DATA[name]
            data = write(root / name, root / "cache")
            started = time.perf_counter()
            default = run_train(data, root / f"{name}-default", *SCRATCH, *size_args,
                                "--epochs", str(args.epochs))  # fmt: skip
            default_seconds = time.perf_counter() - started
            tuned = tune_best(data, root / f"{name}-tune", args.trials, args.epochs, size_args)
            tuned_test = best_test_accuracy(data, Path(tuned["best_run"]))
            print(
                f"{name}: default test {default['test_accuracy']:.4f} "
                f"({default_seconds:.0f} s); tune best val {tuned['best_value']:.4f}, test "
                f"{tuned_test:.4f} ({tuned['seconds']:.0f} s for {tuned['trials']} trials, "
                f"{tuned['pruned']} pruned); best {tuned['best_params']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
