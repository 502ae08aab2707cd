"""Training with a classical head (`imgcls train DATA --classifier logreg|svm|mlp|knn`):
features of a pretrained backbone, extracted once, and a scikit-learn classifier fitted on
them (`heads.fit_head`); no backprop. `train.train` hands such runs here.

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

from imgcls.checkpoint import (
    RUN_CONFIG,
    is_run_dir,
    new_run_config,
    save_weights,
    write_json,
    write_metrics,
    write_skipped,
)
from imgcls.classifier import ImageClassifier
from imgcls.data import find_splits
from imgcls.heads import fit_head, head_log_probabilities, save_head_onnx
from imgcls.models import canonical_name
from imgcls.train import ConfigError, TrainConfig, TrainResult, calibrate_run, reporter

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
    splits = find_splits(config.data, config.val_split, config.seed)
    backbone = ImageClassifier(
        config.model,
        weights=config.weights,
        batch_size=config.batch_size,
        img_size=config.img_size,
        backend="torch",
    )

    def features(samples: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
        if not samples:
            return np.zeros((0, 0), np.float32), np.zeros(0, int)
        vectors = [f for _, f in backbone.features_paths([p for p, _ in samples])]
        return np.stack(vectors), np.array([label for _, label in samples])

    extracting = time.perf_counter()
    train_x, train_y = features(splits.train)
    val_x, val_y = features(splits.val)
    test_x, test_y = features(splits.test)
    num_images = len(train_y) + len(val_y) + len(test_y)
    images_per_s = num_images / (time.perf_counter() - extracting)
    say(f"{config.model}: {train_x.shape[1]} features from {num_images} images "
        f"({images_per_s:.1f} images/s); fitting {config.classifier}")  # fmt: skip
    head = fit_head(config.classifier, train_x, train_y, val_x, val_y, seed=config.seed)
    test_accuracy = float((head.pipeline.predict(test_x) == test_y).mean()) if len(test_y) else None

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
        val_logits = head_log_probabilities(head.val_proba)  # heads give probabilities
        trust = calibrate_run(out, config_json, config, val_logits, val_y, val_x, train_x)
    write_json(out / RUN_CONFIG, config_json)
    seconds = time.perf_counter() - started
    row = {
        "epoch": 1,
        "train_acc": float((head.pipeline.predict(train_x) == train_y).mean()),
        "val_acc": head.val_accuracy,
        "seconds": seconds,
        "images_per_s": images_per_s,
    }
    write_metrics(out, [row], ema=False)
    write_skipped(out, splits.skipped)
    say(f"{config.classifier} {head.params}: val accuracy {_fmt(head.val_accuracy)}, "
        f"test accuracy {_fmt(test_accuracy)}; run directory {out}")  # fmt: skip
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
        **trust,
    )


def _fmt(accuracy: float | None) -> str:
    return "n/a" if accuracy is None else f"{accuracy:.4f}"
