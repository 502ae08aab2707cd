"""`TrainConfig`: every setting of a training run, its default and its check; and
`TrainResult`, what a finished run reports.

Apart from `loop.py` so that it imports no PyTorch: the command line reads its `train`
options' defaults from here, so each default is written once.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imgcls.data.augment import AUGMENT_PRESETS
from imgcls.data.label_files import is_label_file
from imgcls.errors import ConfigError
from imgcls.models.registry import DEFAULT_MODEL
from imgcls.training.head_fit import HEAD_KINDS
from imgcls.trust.calibration import REJECT_SCORES
from imgcls.trust.conformal import CONFORMAL_SCORES, DEFAULT_CONFORMAL_SCORE
from imgcls.trust.hierarchy import DEFAULT_ANSWER_CONFIDENCE

__all__ = ["CLASSIFIERS", "DEFAULT_LR", "OPTIMIZERS", "TrainConfig", "TrainResult"]

OPTIMIZERS = ("adamw", "sgd")
CLASSIFIERS = ("softmax", *HEAD_KINDS)
DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.05}
_SINGLE_LABEL_ONLY = ("mixup", "cutmix", "label_smoothing", "balance", "teacher")


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved in the run's config.json."""

    data: str  # DATA/<class>/*, DATA/train/<class>/* (+ val/, test/), or LABELS.csv|.jsonl
    out: str  # the run directory to write
    model: str = DEFAULT_MODEL  # any registry name: timm architecture, alexnet, simple_cnn
    pretrained: bool = True  # start from ImageNet weights (False: random initialisation)
    weights: str | None = None  # start from this state dict file instead (safetensors/.pth)
    epochs: int = 10  # passes over the training set
    batch_size: int = 32  # images per optimizer step, all processes together
    img_size: int | None = None  # square input size in pixels (None: the model's own)
    lr: float | None = None  # peak learning rate (None: 1e-3 for adamw, 0.05 for sgd)
    weight_decay: float = 0.05  # decoupled (adamw) or L2 (sgd); never on norms and biases
    optimizer: str = "adamw"  # adamw | sgd (Nesterov momentum 0.9)
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay to zero (≤ 20% of steps)
    label_smoothing: float = 0.0  # cross-entropy label smoothing, 0..1
    augment: str = "light"  # none | light | strong
    hflip: bool | None = None  # left-right flips (None: only where they keep labels)
    mixup: float = 0.0  # MixUp alpha (0: off)
    cutmix: float = 0.0  # CutMix alpha (0: off); with both, one is drawn per batch
    freeze_backbone: bool = False  # train only the classifier head
    classifier: str = "softmax"  # softmax (trained end to end) | logreg | svm | mlp | knn
    balance: bool = False  # weight the loss by inverse class frequency
    clip_grad: float | None = None  # max gradient norm (None: no clipping)
    patience: int | None = None  # stop after this many epochs without a better val accuracy
    val_split: float = 0.2  # fraction of each class held out when DATA has no val/ folder
    # Label files (imgcls.data.label_files): the separator of several labels in one cell (None:
    # whitespace), and whether rows whose file is missing are skipped (counted) or an error.
    label_delim: str | None = None
    skip_missing: bool = False
    # Sigmoid outputs and per-class thresholds even when every image has one label (a data
    # set where some image has several is multi-label anyway).
    multi_label: bool = False
    seed: int = 0  # seeds the split, shuffling, augmentation, initialisation
    amp: bool = False  # autocast: bfloat16 on CPU, float16 (with loss scaling) on CUDA
    channels_last: bool = False  # NHWC memory format (faster convolutions on many devices)
    ema: bool = False  # keep an exponential moving average of the weights; it picks "best"
    ema_decay: float = 0.999  # EMA decay per step (warmed up over the first steps)
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))  # loader procs
    device: str | None = None  # cpu, cuda, cuda:1 ... (None: CUDA when present)
    resume: bool = False  # continue the run in `out` where it stopped
    progress: bool = True  # progress bar and per-epoch lines on stderr
    # The "unknown" rule, fitted on the validation split with the temperature: which score
    # (top-1 calibrated probability, or k-NN similarity to the training features) and the
    # target its threshold meets (default: answer 95% of validation images).
    reject_score: str = "knn"  # knn | max_prob (docs/trust.md has the measurement)
    target_precision: float | None = None  # accuracy wanted on the images answered
    target_coverage: float | None = None  # share of images answered
    # Tracking (imgcls.training.tracking): an MLflow run at this tracking URI (None: off;
    # "": MLflow's default, ./mlruns or MLFLOW_TRACKING_URI), its model registered under
    # `register`; TensorBoard event files in RUN/tb/ (None: when tensorboard is installed).
    mlflow: str | None = None
    register: str | None = None
    tensorboard: bool | None = None
    # Distillation (imgcls.training.distill): a run directory on the same classes teaches;
    # the loss is (1 - weight) * labels' loss + weight * T² * KL at temperature T.
    teacher: str | None = None
    distill_temperature: float = 4.0  # T (Hinton et al.'s range; benchmarks/distill.py)
    distill_weight: float = 0.5
    # Conformal prediction sets, fitted on the validation split (imgcls.trust.conformal).
    conformal_score: str = DEFAULT_CONFORMAL_SCORE  # lac | aps | raps (docs/trust.md)
    # Hierarchical answers: "folders" (DATA/train/<parent>/<class>/*), a CSV file of
    # child,parent rows, or None; and the probability an answer's node must reach.
    taxonomy: str | None = None
    answer_confidence: float = DEFAULT_ANSWER_CONFIDENCE

    def check(self) -> None:
        """Refuse values out of range with a ConfigError that names the field."""
        if not (Path(self.data).is_dir() or is_label_file(self.data)):
            raise ConfigError(
                f"`data`: no such directory {self.data} (nor a .csv / .jsonl label file)",
                parameters=("data",),
            )
        if self.label_delim == "":
            raise ConfigError("`label_delim` must not be empty", parameters=("label_delim",))
        if self.weights is not None and not Path(self.weights).is_file():
            raise ConfigError(f"`weights`: no such file {self.weights}", parameters=("weights",))
        _check(self.epochs >= 1, "epochs", "at least 1", self.epochs)
        _check(self.batch_size >= 1, "batch_size", "at least 1", self.batch_size)
        _check(self.img_size is None or self.img_size >= 8, "img_size", "≥ 8", self.img_size)
        _check(self.lr is None or self.lr > 0, "lr", "positive", self.lr)
        _check(self.weight_decay >= 0, "weight_decay", "≥ 0", self.weight_decay)
        _check(self.optimizer in OPTIMIZERS, "optimizer", " or ".join(OPTIMIZERS), self.optimizer)
        _check(self.warmup_epochs >= 0, "warmup_epochs", "≥ 0", self.warmup_epochs)
        _check(0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)", self.label_smoothing)
        _check(self.augment in AUGMENT_PRESETS, "augment", "|".join(AUGMENT_PRESETS), self.augment)
        _check(self.mixup >= 0, "mixup", "≥ 0", self.mixup)
        _check(self.cutmix >= 0, "cutmix", "≥ 0", self.cutmix)
        _check(self.clip_grad is None or self.clip_grad > 0, "clip_grad", "> 0", self.clip_grad)
        _check(self.patience is None or self.patience >= 1, "patience", "≥ 1", self.patience)
        _check(0 <= self.val_split < 1, "val_split", "in [0, 1)", self.val_split)
        _check(0 < self.ema_decay < 1, "ema_decay", "in (0, 1)", self.ema_decay)
        _check(self.workers >= 0, "workers", "≥ 0", self.workers)
        _check(self.classifier in CLASSIFIERS, "classifier", "|".join(CLASSIFIERS), self.classifier)
        _check(
            self.reject_score in REJECT_SCORES,
            "reject_score",
            " or ".join(REJECT_SCORES),
            self.reject_score,
        )
        _check(
            self.conformal_score in CONFORMAL_SCORES,
            "conformal_score",
            "|".join(CONFORMAL_SCORES),
            self.conformal_score,
        )
        _check(
            0 < self.answer_confidence <= 1,
            "answer_confidence",
            "in (0, 1]",
            self.answer_confidence,
        )
        if self.taxonomy not in (None, "folders") and not Path(self.taxonomy).is_file():
            raise ConfigError(
                f"`taxonomy`: no such file {self.taxonomy} (give a CSV of child,parent rows, "
                "or 'folders' for DATA/train/<parent>/<class>/)",
                parameters=("taxonomy",),
            )
        for name in ("target_precision", "target_coverage"):
            value = getattr(self, name)
            _check(value is None or 0 < value <= 1, name, "in (0, 1]", value)
        if self.register is not None and self.mlflow is None:
            raise ConfigError(
                "`register` needs `mlflow`: the tracking server whose registry takes the model",
                parameters=("register", "mlflow"),
            )
        if self.teacher is not None and self.classifier != "softmax":
            raise ConfigError(
                f"`teacher`: a {self.classifier} head is fitted, not trained; distil into "
                "a network (classifier softmax)",
                parameters=("teacher", "classifier"),
            )
        _check(self.distill_temperature > 0, "distill_temperature", "> 0", self.distill_temperature)
        _check(0 <= self.distill_weight <= 1, "distill_weight", "in [0, 1]", self.distill_weight)
        if self.target_precision is not None and self.target_coverage is not None:
            raise ConfigError(
                "`target_precision` and `target_coverage`: choose one",
                parameters=("target_precision", "target_coverage"),
            )

    def check_multi_label(self) -> None:
        """Refuse, for a multi-label data set, the options that assume one class per
        image: mixing (MixUp and CutMix mix class indices), smoothing, balancing and
        distillation (all are cross-entropy's)."""
        used = [name for name in _SINGLE_LABEL_ONLY if getattr(self, name)]
        if used:
            raise ConfigError(
                f"{', '.join(f'`{name}`' for name in used)}: not for a multi-label data set "
                "(they mix, smooth or weigh one class per image); leave them off",
                parameters=tuple(used),
            )

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]


@dataclass
class TrainResult:
    """What a finished run reports (the CLI prints it with --json)."""

    run_dir: str
    epochs: int  # epochs completed (fewer than asked when early stopping stopped it)
    best_epoch: int
    best_val_accuracy: float | None  # None without a validation set
    test_accuracy: float | None  # best weights on DATA/test, when there is one
    num_train: int
    num_val: int
    skipped: int  # files that are missing (skip_missing) or did not decode
    seconds: float
    calibration: dict[str, Any] | None = None  # temperature, validation ECE before/after
    reject: dict[str, Any] | None = None  # the "unknown" rule and what it did on validation
    # Multi-label runs: accuracies are per label (at 0.5), mAP picks the best epoch, and
    # each class's threshold is chosen on validation.
    multi_label: bool = False
    best_val_map: float | None = None
    test_map: float | None = None
    thresholds: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(ok: bool, name: str, expected: str, got: object) -> None:
    if not ok:
        raise ConfigError(f"`{name}` must be {expected}, got {got}", parameters=(name,))
