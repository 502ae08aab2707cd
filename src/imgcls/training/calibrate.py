"""Calibration after training: the temperature and the "unknown" rule (single-label) or
each class's threshold (multi-label), and the conformal prediction sets, fitted on the
validation split and written into the run's config.json. A trained network and a fitted
head both end here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgcls.data.datasets import DataSplits
from imgcls.data.preprocess import Preprocess
from imgcls.files import write_json
from imgcls.models.registry import classifier_head, pooled_features
from imgcls.models.run_dir import RUN_CONFIG, read_run_config
from imgcls.training.config import TrainConfig
from imgcls.training.report import reporter
from imgcls.training.setup import eval_loader
from imgcls.trust.calibration import KNN_REFERENCE, fit_trust, sigmoid, softmax
from imgcls.trust.conformal import fit_conformal
from imgcls.trust.multilabel import choose_thresholds, multilabel_metrics

__all__ = ["calibrate_network", "calibrate_run"]


def calibrate_network(
    model: nn.Module,
    out: Path,
    config: TrainConfig,
    splits: DataSplits,
    preprocess: Preprocess,
    device: torch.device,
) -> dict[str, Any]:
    """Fit the temperature and the "unknown" rule of a trained network (in eval mode) on
    the validation split (and, for the k-NN score, keep its features of the training
    images)."""
    with_features = config.reject_score == "knn" and not splits.multi_label

    @torch.no_grad()
    def outputs(samples: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits, features, labels = [], [], []
        loader = eval_loader(samples, preprocess, config, device, splits.targets_size)
        for images, targets in loader:
            pooled = pooled_features(model, images.to(device))
            logits.append(classifier_head(model)(pooled).float().cpu().numpy())
            if with_features:
                features.append(pooled.float().cpu().numpy())
            labels.append(targets.numpy())
        stacked = np.concatenate(features) if features else np.zeros((0, 0), np.float32)
        return np.concatenate(logits), np.concatenate(labels), stacked

    val_logits, val_y, val_x = outputs(splits.val)
    train_x = outputs(splits.train)[2] if with_features else None
    config_json = read_run_config(out)
    trust = calibrate_run(out, config_json, config, val_logits, val_y, val_x, train_x)
    write_json(out / RUN_CONFIG, config_json)
    return trust


def calibrate_run(
    out: Path,
    config_json: dict[str, Any],
    config: TrainConfig,
    val_logits: Any,
    val_y: Any,
    val_x: Any,
    train_x: Any,
) -> dict[str, Any]:
    """Fit calibration and rejection on validation (logits, labels, features; training
    features for the k-NN score) of a network or a head; put them in `config_json` (and
    the k-NN reference file in `out`) and return them for the TrainResult. A multi-label
    run (labels: (N, C) 0/1) gets its per-class thresholds instead (docs/trust.md)."""
    if config_json.get("multi_label"):
        probabilities = sigmoid(val_logits)
        _fit_conformal(config_json, config, probabilities, val_y)
        return _fit_thresholds(config_json, config, probabilities, val_y)
    calibration, reject, knn = fit_trust(
        val_logits,
        val_y,
        score=config.reject_score,
        target_precision=config.target_precision,
        target_coverage=config.target_coverage,
        val_features=val_x,
        train_features=train_x,
        seed=config.seed,
    )
    if knn is not None:
        knn.save(out / KNN_REFERENCE)
    config_json.update(
        temperature=calibration["temperature"], calibration=calibration, reject=reject
    )
    _fit_conformal(
        config_json, config, softmax(np.asarray(val_logits) / calibration["temperature"]), val_y
    )
    say = reporter(config)  # (rank 0 alone calibrates)
    say(
        f"calibration: temperature {calibration['temperature']:.3f}, validation ECE "
        f"{calibration['val_ece_before']:.4f} → {calibration['val_ece_after']:.4f}; "
        f"unknown below {reject['score']} {reject['threshold']:.4f} "
        f"(answers {reject['val_coverage']:.0%} of validation images)"
    )
    return {"calibration": calibration, "reject": reject}


def _fit_conformal(
    config_json: dict[str, Any], config: TrainConfig, probabilities: Any, labels: Any
) -> None:
    """The conformal calibration (thresholds at the standard levels and the scores) of the
    calibrated validation probabilities, into `config_json` (imgcls.trust.conformal)."""
    conformal = fit_conformal(probabilities, labels, config.conformal_score, seed=config.seed)
    config_json["conformal"] = conformal.to_config()
    sizes = [
        f"{level:.0%} {conformal.sets(probabilities, level).sum(axis=1).mean():.2f}"
        for level in conformal.thresholds
    ]
    reporter(config)(
        f"prediction sets ({conformal.score}) fitted on {len(labels)} validation images; "
        f"mean size there at {', '.join(sizes)}"
    )


def _fit_thresholds(
    config_json: dict[str, Any], config: TrainConfig, probabilities: Any, targets: Any
) -> dict[str, Any]:
    """Each class's threshold, chosen where its validation F1 is highest, into
    `config_json` with what the thresholds achieve on validation."""

    names = config_json["class_names"]
    thresholds = choose_thresholds(targets, probabilities)
    achieved = multilabel_metrics(
        targets, probabilities, probabilities >= thresholds, names, thresholds
    )
    config_json.update(
        thresholds=thresholds.tolist(),
        threshold_fit={
            "val_images": len(targets),
            **{f"val_{key}": achieved[key] for key in ("mAP", "micro_f1", "subset_accuracy")},
        },
    )
    reporter(config)(
        f"thresholds per class on {len(targets)} validation images "
        f"({', '.join(f'{n} {t:.2f}' for n, t in zip(names, thresholds, strict=True))}): "
        f"micro-F1 {achieved['micro_f1']:.4f}, subset accuracy "
        f"{achieved['subset_accuracy']:.4f}"
    )
    return {"thresholds": dict(zip(names, thresholds.tolist(), strict=True))}
