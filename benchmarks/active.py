"""Active learning, simulated: does `imgcls select`'s default strategy teach a model more
per label than labelling at random?

Data (no test uses it): rendered letters, 20 classes (A-T) in OpenCV's eight Hershey
fonts, italic or not, rotated up to 25 degrees, scaled, shifted, on random gray levels
with noise and blur, 64x64 PNGs; 150 a class form the unlabelled pool, 40 a class the
test set (seed 0). A second pool, "near-copies", is 600 of those letters five times
each, every copy shifted by a pixel or two with fresh noise: a served-image sample where
one confusing photo comes back again and again.

Loop, per pool, strategy and repeat (8 seeds): 2 labelled images a class to start; then 5
rounds, each labels N = 40 more chosen by the strategy from the model of the round
before; a logistic-regression head (scikit-learn, C=1) on EfficientNet-Lite0 features at
64 px is retrained each round, and its test accuracy recorded. Features are extracted
once (the backbone is frozen, as in a logreg run), so each round costs a head fit.

    PYTHONPATH=src .venv/bin/python benchmarks/active.py [--work /tmp/active-bench]
        [--pool-factor 4] [--strategies uncertainty+diversity,random]

The figures (and the machine) are in docs/loop.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

import imgcls.select
from imgcls import ImageClassifier
from imgcls.select import STRATEGIES, rank

CLASSES = "ABCDEFGHIJKLMNOPQRST"
FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL,
)  # fmt: skip
SIZE = 96
POOL_PER_CLASS, TEST_PER_CLASS = 150, 40
SEED_PER_CLASS, ROUNDS, PER_ROUND, REPEATS = 2, 5, 40, 8
BASES, COPIES = 600, 5  # the near-copies pool


def letter(rng: np.random.Generator, char: str) -> np.ndarray:
    """One rendered letter: a random font, slant, size, stroke, place and gray levels."""
    background, ink = (rng.uniform(0, 255, 2)).astype(int)
    if abs(int(background) - int(ink)) < 60:
        ink = 255 - background
    canvas = np.full((SIZE * 2, SIZE * 2), background, np.uint8)
    font = int(FONTS[rng.integers(len(FONTS))]) | (cv2.FONT_ITALIC if rng.random() < 0.3 else 0)
    scale, thickness = rng.uniform(2.4, 4.0), int(rng.integers(3, 9))
    (w, h), _ = cv2.getTextSize(char, font, scale, thickness)
    origin = (
        SIZE - w // 2 + int(rng.integers(-10, 11)),
        SIZE + h // 2 + int(rng.integers(-10, 11)),
    )
    cv2.putText(canvas, char, origin, font, scale, int(ink), thickness, cv2.LINE_AA)
    turn = cv2.getRotationMatrix2D((SIZE, SIZE), rng.uniform(-15, 15), rng.uniform(0.8, 1.1))
    canvas = cv2.warpAffine(canvas, turn, canvas.shape[::-1], borderValue=int(background))
    return cv2.resize(canvas, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def jitter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A near-copy: shifted by up to 2 pixels, fresh noise and blur."""
    dx, dy = rng.integers(-2, 3, 2)
    moved = cv2.warpAffine(image, np.float32([[1, 0, dx], [0, 1, dy]]), image.shape[::-1],
                           borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    return finish(rng, moved)


def finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    noisy = image.astype(np.float32) + rng.normal(0, rng.uniform(3, 12), image.shape)
    blurred = cv2.GaussianBlur(noisy.clip(0, 255).astype(np.uint8), (3, 3), rng.uniform(0.1, 1.2))
    return cv2.cvtColor(blurred, cv2.COLOR_GRAY2BGR)


def write_images(work: Path) -> dict[str, tuple[list[Path], np.ndarray]]:
    """The PNGs of each set: (paths, class indices)."""
    rng = np.random.default_rng(0)
    sets: dict[str, tuple[list[Path], list[int]]] = {"pool": ([], []), "test": ([], []),
                                                     "near-copies": ([], [])}  # fmt: skip
    bases = []
    for target, count in (("pool", POOL_PER_CLASS), ("test", TEST_PER_CLASS)):
        for index, char in enumerate(CLASSES):
            for i in range(count):
                raw = letter(rng, char)
                path = work / target / char / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), finish(rng, raw))
                sets[target][0].append(path)
                sets[target][1].append(index)
                if target == "pool":
                    bases.append((raw, index))
    for b in rng.choice(len(bases), BASES, replace=False):
        raw, index = bases[b]
        for copy in range(COPIES):
            path = work / "near-copies" / CLASSES[index] / f"{b}-{copy}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), jitter(rng, raw))
            sets["near-copies"][0].append(path)
            sets["near-copies"][1].append(index)
    return {name: (paths, np.asarray(labels)) for name, (paths, labels) in sets.items()}


def features(work: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    cache = work / "features.npz"
    if cache.exists():
        saved = np.load(cache)
        return {
            name: (saved[f"{name}-x"], saved[f"{name}-y"])
            for name in ("pool", "test", "near-copies")
        }
    sets = write_images(work)
    classifier = ImageClassifier("efficientnet_lite0", img_size=SIZE, batch_size=32)
    found = {}
    for name, (paths, labels) in sets.items():
        vectors = [vector for _, vector in classifier.features_paths(paths)]
        found[name] = (np.stack(vectors).astype(np.float32), labels)
    np.savez(
        cache, **{f"{n}-{k}": v for n, (x, y) in found.items() for k, v in (("x", x), ("y", y))}
    )
    return found


def fit(x: np.ndarray, y: np.ndarray) -> LogisticRegression:
    return LogisticRegression(C=1.0, max_iter=2000).fit(x, y)


def loop(pool_x, pool_y, test_x, test_y, strategy: str, seed: int) -> list[float]:
    """Test accuracy after the seed and after each round."""
    rng = np.random.default_rng(seed)
    labelled = np.concatenate([
        rng.choice(np.flatnonzero(pool_y == c), SEED_PER_CLASS, replace=False)
        for c in range(len(CLASSES))
    ])  # fmt: skip
    accuracies = []
    for round_ in range(ROUNDS + 1):
        head = fit(pool_x[labelled], pool_y[labelled])
        accuracies.append(float((head.predict(test_x) == test_y).mean()))
        if round_ == ROUNDS:
            break
        rest = np.setdiff1d(np.arange(len(pool_y)), labelled)
        # The head's probabilities, as a logreg run's ImageClassifier gives them.
        probabilities = head.predict_proba(pool_x[rest])
        picks = rank(probabilities, pool_x[rest], PER_ROUND, strategy,
                     labelled_features=pool_x[labelled], seed=seed * 100 + round_)  # fmt: skip
        labelled = np.concatenate([labelled, rest[picks]])
    return accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/active-bench"))
    parser.add_argument("--pool-factor", type=int, default=imgcls.select.POOL_FACTOR)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    args = parser.parse_args()
    imgcls.select.POOL_FACTOR = args.pool_factor
    start = time.perf_counter()
    found = features(args.work)
    print(f"features: {time.perf_counter() - start:.0f} s; POOL_FACTOR {args.pool_factor}")
    test_x, test_y = found["test"]
    # One BLAS thread: a 120-image fit took 96 s with a thread per core on a loaded
    # machine (threads waiting on each other), 1.7 s with one.
    threadpool_limits(1)
    for pool in ("pool", "near-copies"):
        pool_x, pool_y = found[pool]
        print(f"\n{pool}: {len(pool_y)} images; labels after each round "
              f"({SEED_PER_CLASS * len(CLASSES)} seed + {PER_ROUND} a round), "
              f"test accuracy, mean of {REPEATS} seeds")  # fmt: skip
        counts = [SEED_PER_CLASS * len(CLASSES) + PER_ROUND * r for r in range(ROUNDS + 1)]
        print(f"{'strategy':<24}" + "".join(f"{c:>8}" for c in counts))
        for strategy in args.strategies.split(","):
            runs = np.array(
                [loop(pool_x, pool_y, test_x, test_y, strategy, s) for s in range(REPEATS)]
            )
            print(f"{strategy:<24}" + "".join(f"{a:8.3f}" for a in runs.mean(axis=0)))


if __name__ == "__main__":
    main()
