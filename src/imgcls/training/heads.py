"""Training with a classical head (`imgcls train DATA --classifier logreg|svm|mlp|knn`):
features of a pretrained backbone, extracted once, and a scikit-learn classifier fitted on
them (`head_fit.fit_head`); no backprop. `loop.train` hands such runs here.

The run directory holds the backbone weights, the head as ONNX (`head.onnx`) and a
config.json like any other run's, so predict, evaluate and serve use it unchanged.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.data.datasets import multi_hot
from imgcls.errors import ConfigError
from imgcls.files import write_json
from imgcls.inference.classifier import ImageClassifier
from imgcls.inference.heads import head_logits
from imgcls.models.registry import canonical_name
from imgcls.models.run_dir import RUN_CONFIG, is_run_dir
from imgcls.models.weights import save_weights
from imgcls.training.calibrate import calibrate_run
from imgcls.training.config import TrainConfig, TrainResult
from imgcls.training.head_fit import fit_head, save_head_onnx
from imgcls.training.report import reporter
from imgcls.training.run_writer import new_run_config, write_metrics, write_skipped
from imgcls.training.setup import read_splits
from imgcls.trust.multilabel import label_accuracy, mean_average_precision

__all__ = ["train_head"]


def train_head(config: TrainConfig) -> TrainResult:
    """Fit a `config.classifier` head on frozen features of the pretrained backbone
    `config.model` and write the run directory `config.out`."""
    started = time.perf_counter()
    if not (config.pretrained or config.weights) or is_run_dir(config.model):
        raise ConfigError(
            "`classifier`: a head needs a pretrained registry backbone's features",
            parameters=("classifier",),
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "`classifier`: fitting a head runs in one process, not torchrun",
            parameters=("classifier",),
        )
    say = reporter(config)
    splits = read_splits(config)
    multi_label = splits.multi_label
    num_classes = len(splits.class_names)
    backbone = ImageClassifier(
        config.model,
        weights=config.weights,
        batch_size=config.batch_size,
        img_size=config.img_size,
        backend="torch",
    )

    def features(samples: list[tuple[Path, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """Features and targets: class indices, or (N, C) 0/1 for multi-label."""
        labels = [label for _, label in samples]
        targets = multi_hot(labels, num_classes) if multi_label else np.array(labels, int)
        if not samples:
            return np.zeros((0, 0), np.float32), targets
        vectors = [f for _, f in backbone.features_paths([p for p, _ in samples])]
        return np.stack(vectors), targets

    extracting = time.perf_counter()
    train_x, train_y = features(splits.train)
    val_x, val_y = features(splits.val)
    test_x, test_y = features(splits.test)
    num_images = len(train_y) + len(val_y) + len(test_y)
    images_per_s = num_images / (time.perf_counter() - extracting)
    say(f"{config.model}: {train_x.shape[1]} features from {num_images} images "
        f"({images_per_s:.1f} images/s); fitting {config.classifier}")  # fmt: skip
    if multi_label:
        say(f"multi-label: one-vs-rest {config.classifier}, one per class")
    head = fit_head(config.classifier, train_x, train_y, val_x, val_y, seed=config.seed)
    test_accuracy, test_map = _accuracy_and_map(head, test_x, test_y)

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / "best.safetensors", backbone.module.state_dict())
    save_head_onnx(head, train_x.shape[1], out / "head.onnx")
    config_json = new_run_config(
        canonical_name(config.model), splits, backbone.preprocess, asdict(config)
    )
    config_json.update(
        classifier=config.classifier,
        head="head.onnx",
        head_params=head.params,
        head_search=head.search,
        backbone_num_classes=backbone.num_classes,
    )
    trust: dict[str, Any] = {}
    if head.val_proba is not None:
        val_logits = head_logits(head.val_proba, multi_label)  # heads give probabilities
        trust = calibrate_run(out, config_json, config, val_logits, val_y, val_x, train_x)
    write_json(out / RUN_CONFIG, config_json)
    seconds = time.perf_counter() - started
    row = {
        "epoch": 1,
        "train_acc": _accuracy_and_map(head, train_x, train_y)[0],
        "val_acc": head.val_accuracy,
        "seconds": seconds,
        "images_per_s": images_per_s,
        **({"val_map": head.val_map} if multi_label else {}),
    }
    write_metrics(out, [row], ema=False, multi_label=multi_label)
    write_skipped(out, splits.skipped)
    maps = f", val mAP {_fmt(head.val_map)}, test mAP {_fmt(test_map)}" if multi_label else ""
    say(f"{config.classifier} {head.params}: val accuracy {_fmt(head.val_accuracy)}, "
        f"test accuracy {_fmt(test_accuracy)}{maps}; run directory {out}")  # fmt: skip
    return TrainResult(
        run_dir=str(out),
        epochs=1,
        best_epoch=1,
        best_val_accuracy=head.val_accuracy,
        test_accuracy=test_accuracy,
        num_train=len(splits.train),
        num_val=len(splits.val),
        skipped=len(splits.skipped),
        seconds=seconds,
        multi_label=multi_label,
        best_val_map=head.val_map,
        test_map=test_map,
        **trust,
    )


def _accuracy_and_map(head, x: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    """Accuracy of the fitted head on (x, y) and, for multi-label targets, per-label
    accuracy at 0.5 and mAP (None, None without images)."""
    if not len(y):
        return None, None
    if y.ndim == 1:
        return float((head.pipeline.predict(x) == y).mean()), None

    proba = head.pipeline.predict_proba(x)
    return label_accuracy(y, proba), mean_average_precision(y, proba)


def _fmt(accuracy: float | None) -> str:
    return "n/a" if accuracy is None else f"{accuracy:.4f}"
