"""Trustworthy predictions, measured: "unknown" on digits never seen, calibration of an
over-confident network, and planted label flips found by `doctor --labels`.

Data: scikit-learn's bundled handwritten digits (1,797 images of 8x8, 10 classes), written
as PNG folders at 64x64 and split 60/20/20 (train/val/test, stratified, seed 0), as in
heads_vs_finetune.py. Nothing is downloaded.

1. unknown: train on digits 0-7 only; the test images of 8 and 9 are the unseen classes.
   For each model (logreg head on EfficientNet-Lite0 features at 64 px; simple_cnn trained
   from scratch at 32 px) and each rejection score (max_prob, knn), with the default
   target (answer 95% of validation images): share of unseen-class test images answered
   unknown, and share of known-class test images answered unknown.
2. calibration: simple_cnn on all 10 digits, 40 epochs, no augmentation, no weight decay;
   ECE on the test split before and after the temperature fitted on the validation split.
   Then the same network made deliberately over-confident (its last layer's weights and
   bias times 4, so every logit is 4x), its temperature refitted on the validation split:
   ECE before and after again. Step "heads": each classical head (logreg, svm, mlp, knn on
   EfficientNet-Lite0 features at 64 px) on all ten digits, test ECE before and after.
3. label audit: all 1,797 images as DATA/<digit>/, 5% of them (90) moved to another digit's
   folder at random; `imgcls.doctor.audit.audit_labels` (EfficientNet-Lite0 features at 64 px,
   5-fold logistic regression): precision at k = 90 of the ranking, and how many of the 90
   are among the flagged images.

4. conformal scores (step "scores"): LAC, APS and RAPS compared at equal coverage on
   EfficientNet-Lite0 features (64 px) of 6,000 Fashion-MNIST t10k images and of all
   1,797 digits: a logistic regression fitted on the first 300 or 2,000 (fashion), 150 or
   600 (digits) of a seeded permutation, the rest split in random calibration/test halves
   30 times (temperature fitted on the calibration half, as a run does); mean coverage,
   set size, singleton share and the coverage of the class covered least.
5. prediction sets (step "sets"): on the digits and on Fashion-MNIST (Debian's
   `dataset-fashion-mnist`, /usr/share/datasets/fashion-mnist: its t10k file, 200 train /
   100 val / 200 test images per class, 28 px as 32 px PNGs, seed 0), a logreg head on
   EfficientNet-Lite0 features at 64 px and a simple_cnn trained end to end (32 px, 15
   epochs). Each run fits its conformal thresholds (LAC) on its validation split; on the
   test split, per level: coverage, mean and largest set size, singleton share, the class
   covered least. No test uses these two data sets.
6. hierarchy (step "hierarchy"): the Fashion-MNIST logreg head trained with a taxonomy
   file (tops < clothing, footwear, bag); on the test split, for answer confidences 0.8,
   0.9, 0.95: the share answered at a leaf, the share with no answer, and the accuracy of
   the answers (right when the true class is under the answer node) against top-1.

    PYTHONPATH=src .venv/bin/python benchmarks/trust.py [--out /tmp/trust-bench]

Measured on 2 shared cores of an AMD EPYC (Zen 4), no GPU; the figures are in docs/trust.md.
Step "scores" (2026-12-08, other work running): at 0.9, LAC's sets are 0.92-1.59 labels on
average against APS's 3.97-4.20 and RAPS's 1.28-2.65, at the same coverage (0.896-0.902).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from imgcls import ImageClassifier
from imgcls.data.images import list_images
from imgcls.doctor.audit import audit_labels
from imgcls.evaluate import evaluate, find_labelled_images
from imgcls.training.config import TrainConfig
from imgcls.training.loop import train

UNSEEN = ("8", "9")
FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle_boot")  # fmt: skip
FASHION_TAXONOMY = {  # child: parent
    **{name: "tops" for name in ("tshirt", "pullover", "coat", "shirt")},
    **{name: "clothing" for name in ("tops", "trouser", "dress")},
    **{name: "footwear" for name in ("sandal", "sneaker", "ankle_boot")},
    "bag": "accessory",
}


def write_fashion(root: Path, per_class: tuple[int, int, int] = (200, 100, 200)) -> Path:
    """root/{train,val,test}/<class>/*.png from Fashion-MNIST's t10k file (seeded)."""
    import gzip

    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    rng = np.random.default_rng(0)
    bounds = np.cumsum((0, *per_class))
    for label, name in enumerate(FASHION_CLASSES):
        chosen = rng.permutation(np.flatnonzero(labels == label))[: bounds[-1]]
        for split, start, stop in zip(("train", "val", "test"), bounds, bounds[1:], strict=False):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen[start:stop]:
                big = cv2.resize(images[i], (32, 32), interpolation=cv2.INTER_LINEAR)
                cv2.imwrite(str(folder / f"{i}.png"), big)
    return root


def _fashion_arrays(count: int = 6000) -> tuple[np.ndarray, np.ndarray]:
    import gzip

    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    chosen = np.random.default_rng(0).permutation(len(images))[:count]
    return images[chosen], labels[chosen]


def score_comparison(data: Path, out: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    from imgcls.trust.calibration import fit_temperature, softmax
    from imgcls.trust.conformal import CONFORMAL_SCORES, fit_conformal, set_metrics

    digits = load_digits()
    sets = {
        "Fashion-MNIST": (*_fashion_arrays(), (300, 2000)),
        "digits": ((digits.images * 255 / 16).astype(np.uint8), digits.target, (150, 600)),
    }
    classifier = ImageClassifier(img_size=64)
    print("| data | training images | top-1 | level | score | coverage | mean size "
          "| singletons | class covered least |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (images, labels, sizes) in sets.items():
        rgb = [np.repeat(cv2.resize(im, (64, 64))[..., None], 3, 2) for im in images]
        features = np.concatenate([
            classifier.runtime.features(np.stack([classifier.prepare(im) for im in rgb[s:s + 64]]))
            for s in range(0, len(rgb), 64)
        ])  # fmt: skip
        order = np.random.default_rng(0).permutation(len(labels))
        for size in sizes:
            train_idx, rest = order[:size], order[size:]
            model = LogisticRegression(max_iter=2000).fit(features[train_idx], labels[train_idx])
            log_p, truth = model.predict_log_proba(features[rest]), labels[rest]
            results: dict[tuple[float, str], list] = {}
            for repeat in range(30):
                split = np.random.default_rng(repeat).permutation(len(rest))
                cal, test = split[: len(rest) // 2], split[len(rest) // 2 :]
                t = fit_temperature(log_p[cal], truth[cal])
                p_cal, p_test = softmax(log_p[cal] / t), softmax(log_p[test] / t)
                for score in CONFORMAL_SCORES:
                    conformal = fit_conformal(p_cal, truth[cal], score)
                    for level in (0.8, 0.9, 0.95):
                        m = set_metrics(conformal.sets(p_test, level), truth[test],
                                        [str(c) for c in range(10)])  # fmt: skip
                        results.setdefault((level, score), []).append(
                            (m["coverage"], m["mean_set_size"], m["singleton_share"],
                             m["weakest_class_coverage"])
                        )  # fmt: skip
            top1 = (log_p.argmax(axis=1) == truth).mean()
            for (level, score), rows in sorted(results.items()):
                mean = np.mean(rows, axis=0)
                print(f"| {name} | {size} | {top1:.1%} | {level} | {score} | {mean[0]:.3f} "
                      f"| {mean[1]:.2f} | {mean[2]:.0%} | {mean[3]:.2f} |", flush=True)  # fmt: skip


SET_MODELS = {
    "logreg head (EfficientNet-Lite0, 64 px)": dict(classifier="logreg", img_size=64),
    "simple_cnn (end to end, 32 px, 15 epochs)": dict(
        model="simple_cnn", pretrained=False, img_size=32, epochs=15, augment="none"
    ),
}


def prediction_sets(data: Path, out: Path) -> None:
    print("| data | model | top-1 | level | coverage | mean size | largest | singletons "
          "| class covered least |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for data_name, root in (("digits", data), ("Fashion-MNIST", write_fashion(out / "fashion"))):
        for name, settings in SET_MODELS.items():
            run = out / "runs" / f"sets-{data_name}-{settings.get('model', 'head')}"
            train(TrainConfig(data=str(root), out=str(run), reject_score="max_prob",
                              progress=False, **settings))  # fmt: skip
            classifier = ImageClassifier(str(run))
            metrics = evaluate(classifier, find_labelled_images(root, "test")).metrics()
            for level, m in metrics["conformal"]["levels"].items():
                print(
                    f"| {data_name} | {name} | {metrics['accuracy']:.1%} | {level} "
                    f"| {m['coverage']:.1%} | {m['mean_set_size']:.2f} | {m['max_set_size']} "
                    f"| {m['singleton_share']:.1%} | {m['weakest_class']} "
                    f"({m['weakest_class_coverage']:.0%}) |",
                    flush=True,
                )


def hierarchy(data: Path, out: Path) -> None:
    root = out / "fashion"
    if not root.exists():
        write_fashion(root)
    taxonomy = out / "fashion-taxonomy.csv"
    taxonomy.write_text("".join(f"{c},{p}\n" for c, p in FASHION_TAXONOMY.items()))
    run = out / "runs" / "hierarchy-fashion-head"
    train(TrainConfig(data=str(root), out=str(run), classifier="logreg", img_size=64,
                      reject_score="max_prob", taxonomy=str(taxonomy), progress=False))  # fmt: skip
    classifier = ImageClassifier(str(run))
    samples = find_labelled_images(root, "test")
    scored = dict(classifier.scored_paths([str(p) for p, _ in samples]))
    probabilities = np.stack([scored[str(p)][0] for p, _ in samples])
    truth = [names[0] for _, names in samples]
    top1 = np.mean([classifier.labels.names[i] == t
                    for i, t in zip(probabilities.argmax(axis=1), truth, strict=True)])  # fmt: skip
    print(f"Fashion-MNIST, logreg head: top-1 accuracy {top1:.1%} on {len(truth)} test images")
    print("| answer confidence | answered at a leaf | no answer | answers right "
          "| leaf answers right |")  # fmt: skip
    print("|---|---|---|---|---|")
    for target in (0.8, 0.9, 0.95):
        answers = classifier.taxonomy.answers(probabilities, target)
        given = [(a, t) for a, t in zip(answers, truth, strict=True) if a is not None]
        leaf = [(a, t) for a, t in given if a.label in FASHION_CLASSES]
        print(
            f"| {target} | {len(leaf) / len(truth):.1%} | {1 - len(given) / len(truth):.1%} "
            f"| {np.mean([a.label in _ancestry(t) for a, t in given]):.1%} "
            f"| {np.mean([a.label == t for a, t in leaf]):.1%} |",
            flush=True,
        )


def _ancestry(name: str) -> set[str]:
    """`name` and the nodes above it in FASHION_TAXONOMY."""
    nodes = {name}
    while name in FASHION_TAXONOMY:
        name = FASHION_TAXONOMY[name]
        nodes.add(name)
    return nodes


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


def unknown_rates(data: Path, out: Path) -> None:
    known = out / "known"  # digits 0-7 of every split
    unseen = [p for digit in UNSEEN for p in list_images(data / "test" / digit)]
    for split in ("train", "val", "test"):
        for folder in (data / split).iterdir():
            if folder.name not in UNSEEN:
                shutil.copytree(folder, known / split / folder.name, dirs_exist_ok=True)
    in_distribution = list_images(known / "test")
    print("| model | score | unknown on unseen 8, 9 | unknown on known 0-7 | accuracy answered |")
    print("|---|---|---|---|---|")
    models = {
        "logreg head (EfficientNet-Lite0, 64 px)": dict(classifier="logreg", img_size=64),
        "simple_cnn (scratch, 32 px, 15 epochs)": dict(
            model="simple_cnn", pretrained=False, img_size=32, epochs=15, augment="none"
        ),
    }
    for name, settings in models.items():
        for score in ("max_prob", "knn"):
            run = out / "runs" / f"{settings.get('model', 'head')}-{score}"
            train(TrainConfig(data=str(known), out=str(run), reject_score=score, progress=False,
                              **settings))  # fmt: skip
            classifier = ImageClassifier(str(run))
            ood = [preds for _, preds in classifier.classify_paths(unseen)]
            ind = [preds for _, preds in classifier.classify_paths(in_distribution)]
            truth = [Path(p).parent.name for p in in_distribution]
            answered = [(a[0].label == t) for a, t in zip(ind, truth, strict=True)
                        if not a[0].unknown]  # fmt: skip
            print(
                f"| {name} | {score} | {np.mean([a[0].unknown for a in ood]):.1%} "
                f"| {np.mean([a[0].unknown for a in ind]):.1%} | {np.mean(answered):.1%} |",
                flush=True,
            )


def calibration(data: Path, out: Path) -> None:
    run = out / "runs" / "cnn40"
    train(
        TrainConfig(
            data=str(data),
            out=str(run),
            model="simple_cnn",
            pretrained=False,
            img_size=32,
            epochs=40,
            augment="none",
            weight_decay=0.0,
            reject_score="max_prob",
            progress=False,
        )  # fmt: skip
    )
    metrics = evaluate(ImageClassifier(str(run)), find_labelled_images(data, "test")).metrics()
    print(
        f"simple_cnn, 40 epochs: test accuracy {metrics['accuracy']:.4f}, temperature "
        f"{metrics['temperature']:.3f}, test ECE {metrics['ece_uncalibrated']:.4f} before → "
        f"{metrics['ece']:.4f} after",
        flush=True,
    )
    over_confident(run, data, out / "runs" / "cnn40-x4")


def over_confident(run: Path, data: Path, scaled: Path, factor: float = 4.0) -> None:
    """A copy of `run` whose logits are `factor` times larger, refitted and evaluated."""
    from safetensors.torch import load_file, save_file

    from imgcls.files import write_json
    from imgcls.models.run_dir import read_run_config
    from imgcls.trust.calibration import fit_temperature

    shutil.copytree(run, scaled, dirs_exist_ok=True)
    weights = load_file(str(run / "best.safetensors"))
    for name in ("fc.1.weight", "fc.1.bias"):  # simple_cnn's classifier layer
        weights[name] = weights[name] * factor
    save_file(weights, str(scaled / "best.safetensors"))
    config = read_run_config(scaled)
    config["temperature"] = 1.0
    write_json(scaled / "config.json", config)
    classifier = ImageClassifier(str(scaled))
    samples = find_labelled_images(data, "val")
    names = list(classifier.labels.names)
    logits = np.concatenate(
        [classifier.runtime(np.stack([classifier.prepare(p) for p, _ in samples[i : i + 64]]))
         for i in range(0, len(samples), 64)]
    )  # fmt: skip
    temperature = fit_temperature(logits, np.array([names.index(c) for _, c in samples]))
    config["temperature"] = temperature
    write_json(scaled / "config.json", config)
    metrics = evaluate(ImageClassifier(str(scaled)), find_labelled_images(data, "test")).metrics()
    print(
        f"same, logits x{factor:g}: temperature {temperature:.3f}, test ECE "
        f"{metrics['ece_uncalibrated']:.4f} before → {metrics['ece']:.4f} after",
        flush=True,
    )


def head_calibration(data: Path, out: Path) -> None:
    """Each classical head on all ten digits: test ECE before and after its temperature."""
    for kind in ("logreg", "svm", "mlp", "knn"):
        run = out / "runs" / f"head-{kind}-10"
        train(
            TrainConfig(
                data=str(data),
                out=str(run),
                classifier=kind,
                img_size=64,
                reject_score="max_prob",
                progress=False,
            )
        )
        samples = find_labelled_images(data, "test")
        metrics = evaluate(ImageClassifier(str(run)), samples).metrics()
        print(
            f"{kind} head: test accuracy {metrics['accuracy']:.4f}, temperature "
            f"{metrics['temperature']:.3f}, test ECE {metrics['ece_uncalibrated']:.4f} before → "
            f"{metrics['ece']:.4f} after",
            flush=True,
        )


def label_audit(data: Path, out: Path, share: float = 0.05) -> None:
    flat = out / "flat"
    for path in list_images(data):
        target = flat / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    rng = np.random.default_rng(0)
    files = list_images(flat)
    planted = set()
    for index in rng.choice(len(files), round(share * len(files)), replace=False):
        path = files[index]
        wrong = str((int(path.parent.name) + rng.integers(1, 10)) % 10)
        shutil.move(path, flat / wrong / path.name)
        planted.add(f"{wrong}/{path.name}")
    started = time.perf_counter()
    audit = audit_labels(flat, img_size=64)
    top = {item.path for item in audit.ranked[: len(planted)]}
    flagged = {item.path for item in audit.issues}
    print(
        f"{len(planted)} flips in {len(audit.ranked)} images: precision@{len(planted)} "
        f"{len(top & planted) / len(planted):.3f}; {len(flagged)} flagged, of which "
        f"{len(flagged & planted)} planted; {time.perf_counter() - started:.0f} s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/trust-bench"))
    parser.add_argument(
        "--only",
        choices=("unknown", "calibration", "heads", "audit", "scores", "sets", "hierarchy"),
        default=None,
    )
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    data = write_digits(args.out / "digits")
    steps = {
        "unknown": unknown_rates,
        "calibration": calibration,
        "heads": head_calibration,
        "audit": label_audit,
        "scores": score_comparison,
        "sets": prediction_sets,
        "hierarchy": hierarchy,
    }
    for name, step in steps.items():
        if args.only in (None, name):
            step(data, args.out)


if __name__ == "__main__":
    main()
