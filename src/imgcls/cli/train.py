"""`imgcls train`: a run directory from a data set, with one option per TrainConfig field
(each defaults to that field's default); or, with --find-lr, an LR range test."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from imgcls.cli.app import app
from imgcls.cli.options import (
    Augment,
    Classifier,
    ConformalScore,
    LabelDelim,
    Optimizer,
    RejectScore,
    SkipMissing,
)
from imgcls.cli.output import json_command, print_json, stdout
from imgcls.errors import ConfigError
from imgcls.training.config import TrainConfig, TrainResult

# The defaults of the `train` options are a default TrainConfig's: each is written once.
_TRAIN = TrainConfig(data="DATA", out="RUN")

# The options, named here so that the command reads as its list of settings.
Data = Annotated[
    Path,
    typer.Argument(
        metavar="DATA",
        help="DATA/<class>/*, DATA/train/<class>/* (+ val/, test/) or a LABELS.csv/.jsonl.",
    ),
]
Out = Annotated[Path | None, typer.Option(help="Run directory to write.")]
Model = Annotated[str, typer.Option("--model", "-m", help="Architecture name (or simple_cnn).")]
Pretrained = Annotated[bool, typer.Option(help="Start from ImageNet weights.")]
Weights = Annotated[
    Path | None, typer.Option(help="Start from this state dict (safetensors or .pth/.bin).")
]
Epochs = Annotated[int, typer.Option(help="Passes over the training set.")]
BatchSize = Annotated[int, typer.Option(help="Images per step, all processes together (torchrun).")]
ImgSize = Annotated[int | None, typer.Option(help="Square input size in pixels.")]
Lr = Annotated[
    float | None, typer.Option(help="Peak learning rate (default: 1e-3 adamw, 0.05 sgd).")
]
WeightDecay = Annotated[float, typer.Option(help="Not on norms and biases.")]
OptimizerOption = Annotated[Optimizer, typer.Option(help="The optimizer.")]
WarmupEpochs = Annotated[float, typer.Option(help="Linear warm-up before cosine.")]
LabelSmoothing = Annotated[float, typer.Option(help="Cross-entropy smoothing.")]
AugmentOption = Annotated[Augment, typer.Option(help="Augmentation preset.")]
Hflip = Annotated[
    bool | None,
    typer.Option("--hflip/--no-hflip", help="Left-right flips (default: where they keep labels)."),
]
Mixup = Annotated[float, typer.Option(help="MixUp alpha (0: off).")]
Cutmix = Annotated[float, typer.Option(help="CutMix alpha (0: off).")]
FreezeBackbone = Annotated[bool, typer.Option(help="Train only the classifier head.")]
ClassifierOption = Annotated[
    Classifier,
    typer.Option(help="softmax: trained end to end; the others fit on frozen features."),
]
Balance = Annotated[bool, typer.Option(help="Weight the loss by 1 / class frequency.")]
ClipGrad = Annotated[float | None, typer.Option(help="Max gradient norm.")]
Patience = Annotated[int | None, typer.Option(help="Early stopping patience (epochs).")]
ValSplit = Annotated[float, typer.Option(help="Held-out fraction without DATA/val.")]
MultiLabel = Annotated[
    bool,
    typer.Option(
        "--multi-label",
        help="Sigmoid outputs and per-class thresholds (automatic when "
        "an image has several labels).",
    ),
]
Seed = Annotated[int, typer.Option(help="Random seed.")]
Amp = Annotated[bool, typer.Option(help="Autocast: bf16 on CPU, fp16 on CUDA.")]
ChannelsLast = Annotated[bool, typer.Option(help="NHWC memory format.")]
Ema = Annotated[bool, typer.Option(help="Keep an EMA of the weights.")]
EmaDecay = Annotated[float, typer.Option(help="EMA decay per step.")]
Workers = Annotated[int, typer.Option(help="Data loader processes.")]
Device = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ...")]
Resume = Annotated[bool, typer.Option(help="Continue the run in --out.")]
RejectScoreOption = Annotated[RejectScore, typer.Option(help="What the 'unknown' threshold reads.")]
TargetPrecision = Annotated[
    float | None,
    typer.Option(help="'unknown' threshold: accuracy wanted on the images answered."),
]
TargetCoverage = Annotated[
    float | None,
    typer.Option(help="'unknown' threshold: share of images answered (default 0.95)."),
]
Mlflow = Annotated[
    str | None,
    typer.Option(
        envvar="MLFLOW_TRACKING_URI",
        help="Log the run to MLflow at this tracking URI (http://HOST:PORT, or a folder).",
    ),
]
Register = Annotated[
    str | None, typer.Option(help="Register the model under this name (needs --mlflow).")
]
Tensorboard = Annotated[
    bool | None,
    typer.Option(
        "--tensorboard/--no-tensorboard",
        help="Event files in RUN/tb/ (default: when tensorboard is installed).",
    ),
]
TeacherOption = Annotated[
    Path | None, typer.Option("--teacher", help="Distil from this run (same classes).")
]
DistillTemperature = Annotated[float, typer.Option(help="Distillation temperature.")]
DistillWeight = Annotated[float, typer.Option(help="Weight of the teacher's soft targets.")]
ConformalScoreOption = Annotated[
    ConformalScore, typer.Option(help="Score of the conformal prediction sets.")
]
Taxonomy = Annotated[
    str | None,
    typer.Option(
        help="Hierarchical answers: 'folders' (DATA/train/<parent>/<class>/*) or a CSV of "
        "child,parent rows."
    ),
]
AnswerConfidence = Annotated[
    float, typer.Option(help="Probability a hierarchical answer's node must reach.")
]
FindLr = Annotated[bool, typer.Option(help="Run an LR range test instead.")]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print a final JSON object.")]


@app.command()
@json_command
def train(
    ctx: typer.Context,
    data: Data,
    out: Out = None,
    model: Model = _TRAIN.model,
    pretrained: Pretrained = _TRAIN.pretrained,
    weights: Weights = _TRAIN.weights,
    epochs: Epochs = _TRAIN.epochs,
    batch_size: BatchSize = _TRAIN.batch_size,
    img_size: ImgSize = _TRAIN.img_size,
    lr: Lr = _TRAIN.lr,
    weight_decay: WeightDecay = _TRAIN.weight_decay,
    optimizer: OptimizerOption = _TRAIN.optimizer,
    warmup_epochs: WarmupEpochs = _TRAIN.warmup_epochs,
    label_smoothing: LabelSmoothing = _TRAIN.label_smoothing,
    augment: AugmentOption = _TRAIN.augment,
    hflip: Hflip = _TRAIN.hflip,
    mixup: Mixup = _TRAIN.mixup,
    cutmix: Cutmix = _TRAIN.cutmix,
    freeze_backbone: FreezeBackbone = _TRAIN.freeze_backbone,
    classifier: ClassifierOption = _TRAIN.classifier,
    balance: Balance = _TRAIN.balance,
    clip_grad: ClipGrad = _TRAIN.clip_grad,
    patience: Patience = _TRAIN.patience,
    val_split: ValSplit = _TRAIN.val_split,
    label_delim: LabelDelim = _TRAIN.label_delim,
    skip_missing: SkipMissing = _TRAIN.skip_missing,
    multi_label: MultiLabel = _TRAIN.multi_label,
    seed: Seed = _TRAIN.seed,
    amp: Amp = _TRAIN.amp,
    channels_last: ChannelsLast = _TRAIN.channels_last,
    ema: Ema = _TRAIN.ema,
    ema_decay: EmaDecay = _TRAIN.ema_decay,
    workers: Workers = _TRAIN.workers,
    device: Device = _TRAIN.device,
    resume: Resume = _TRAIN.resume,
    reject_score: RejectScoreOption = _TRAIN.reject_score,
    target_precision: TargetPrecision = _TRAIN.target_precision,
    target_coverage: TargetCoverage = _TRAIN.target_coverage,
    mlflow: Mlflow = _TRAIN.mlflow,
    register: Register = _TRAIN.register,
    tensorboard: Tensorboard = _TRAIN.tensorboard,
    teacher: TeacherOption = _TRAIN.teacher,
    distill_temperature: DistillTemperature = _TRAIN.distill_temperature,
    distill_weight: DistillWeight = _TRAIN.distill_weight,
    conformal_score: ConformalScoreOption = _TRAIN.conformal_score,
    taxonomy: Taxonomy = _TRAIN.taxonomy,
    answer_confidence: AnswerConfidence = _TRAIN.answer_confidence,
    find_lr: FindLr = False,
    json_output: JsonOutput = False,
) -> None:
    """Train a classifier on folders of images into a run directory.

    The run directory is accepted as --model by every command."""
    # deferred: imports torch
    from imgcls.training.loop import train as run_train
    from imgcls.training.lr_find import find_lr as run_find_lr

    if out is None and not find_lr:
        raise ConfigError("--out RUN is required: the run directory to write")
    config = _train_config(ctx.params, progress=not json_output)
    result = run_find_lr(config) if find_lr else run_train(config)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return
    if find_lr:
        summary = {"suggested_lr": result.suggested_lr, "plot": result.plot}
        if json_output:
            print_json(summary)
        else:
            stdout.print(f"suggested learning rate: {result.suggested_lr:.2e} ({result.plot})")
    elif json_output:
        print_json(result.to_dict())
    else:
        _print_trained(result)


def _train_config(params: dict[str, Any], progress: bool) -> TrainConfig:
    """The TrainConfig of the command's options: every option named like a field goes
    straight into it (choices as their strings, paths as text)."""
    options = {
        name: value.value if isinstance(value, Enum) else value
        for name, value in params.items()
        if name in TrainConfig.__dataclass_fields__
    }
    options.update(data=str(params["data"]), out=str(params["out"] or "."), progress=progress)
    for name in ("weights", "teacher"):
        options[name] = None if params[name] is None else str(params[name])
    return TrainConfig(**options)


def _print_trained(result: TrainResult) -> None:
    name, best = "accuracy", result.best_val_accuracy
    if result.multi_label:
        name, best = "mAP", result.best_val_map
    stdout.print(
        f"trained {result.epochs} epoch(s) in {result.seconds:.0f}s; best val {name} "
        f"{'n/a' if best is None else f'{best:.4f}'} (epoch {result.best_epoch}); "
        f"run directory {result.run_dir}"
    )
