"""Training: image folders in, a run directory out. Read it top to bottom: set-up, the
loop (train, evaluate, checkpoint), the end.

One process:

    imgcls train DATA --out runs/exp1

Several processes (DDP, gloo on CPU, nccl on GPU), one machine:

    torchrun --nproc_per_node=4 -m imgcls train DATA --out runs/exp1

`--batch-size` is the global batch: each of N processes takes batch / N images a step, so
the optimizer takes the same steps with the same learning rate whatever N is, and the run
is as good as the one-process run at equal epochs (docs/train.md has the measurement).

Several machines: run the same command on each, with the rendezvous flags

    torchrun --nnodes=2 --node_rank=0|1 --nproc_per_node=8 \\
        --rdzv_backend=c10d --rdzv_endpoint=HOST0:29500 --rdzv_id=exp1 \\
        -m imgcls train DATA --out runs/exp1

(DATA must be readable on every machine; rank 0 alone writes the run directory.)

Reproducibility: every random choice of an epoch (shuffle, augmentation, dropout, mixup)
is seeded from (seed, epoch, rank), so a resumed run repeats the interrupted epoch exactly
as it would have run; the model, EMA, optimizer, scheduler and counters come back from
`state.pt`, written last and atomically at the end of every epoch.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, get_worker_info

from imgcls.calibration import KNN_REFERENCE, REJECT_SCORES, fit_trust
from imgcls.checkpoint import (
    RUN_CONFIG,
    RUN_STATE,
    is_run_dir,
    load_run_state,
    read_run_config,
    save_run_state,
    save_weights,
    write_json,
    write_text,
)
from imgcls.data import DataSplits, ImageFolder, find_splits
from imgcls.heads import HEAD_KINDS, fit_head, head_log_probabilities, save_head_onnx
from imgcls.models import (
    DEFAULT_MODEL,
    build_model,
    canonical_name,
    classifier_head,
    load_initial_weights,
    pooled_features,
)
from imgcls.transforms import (
    AUGMENT_PRESETS,
    Augmentation,
    Preprocess,
    choose_augmentation,
    preprocess_image,
    survey_images,
    train_transform,
)

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "find_lr", "train"]

OPTIMIZERS = ("adamw", "sgd")
CLASSIFIERS = ("softmax", *HEAD_KINDS)
DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.05}
METRICS_COLUMNS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s",
)  # fmt: skip
EMA_COLUMNS = ("ema_val_loss", "ema_val_acc")

console = Console(stderr=True, highlight=False, soft_wrap=True)


class ConfigError(ValueError):
    """A training argument out of range; the message names the argument."""


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved in the run's config.json."""

    data: str  # DATA/<class>/* or DATA/train/<class>/* (+ val/, test/)
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

    def check(self) -> None:
        """Refuse values out of range, naming the argument (the CLI boundary calls this)."""
        if not Path(self.data).is_dir():
            raise ConfigError(f"DATA: no such directory {self.data}")
        if self.weights is not None and not Path(self.weights).is_file():
            raise ConfigError(f"--weights: no such file {self.weights}")
        _check(self.epochs >= 1, "--epochs", "at least 1", self.epochs)
        _check(self.batch_size >= 1, "--batch-size", "at least 1", self.batch_size)
        _check(self.img_size is None or self.img_size >= 8, "--img-size", "≥ 8", self.img_size)
        _check(self.lr is None or self.lr > 0, "--lr", "positive", self.lr)
        _check(self.weight_decay >= 0, "--weight-decay", "≥ 0", self.weight_decay)
        _check(self.optimizer in OPTIMIZERS, "--optimizer", " or ".join(OPTIMIZERS), self.optimizer)
        _check(self.warmup_epochs >= 0, "--warmup-epochs", "≥ 0", self.warmup_epochs)
        _check(
            0 <= self.label_smoothing < 1, "--label-smoothing", "in [0, 1)", self.label_smoothing
        )
        _check(
            self.augment in AUGMENT_PRESETS, "--augment", "|".join(AUGMENT_PRESETS), self.augment
        )
        _check(self.mixup >= 0, "--mixup", "≥ 0", self.mixup)
        _check(self.cutmix >= 0, "--cutmix", "≥ 0", self.cutmix)
        _check(self.clip_grad is None or self.clip_grad > 0, "--clip-grad", "> 0", self.clip_grad)
        _check(self.patience is None or self.patience >= 1, "--patience", "≥ 1", self.patience)
        _check(0 <= self.val_split < 1, "--val-split", "in [0, 1)", self.val_split)
        _check(0 < self.ema_decay < 1, "--ema-decay", "in (0, 1)", self.ema_decay)
        _check(self.workers >= 0, "--workers", "≥ 0", self.workers)
        _check(
            self.classifier in CLASSIFIERS, "--classifier", "|".join(CLASSIFIERS), self.classifier
        )
        _check(
            self.reject_score in REJECT_SCORES,
            "--reject-score",
            " or ".join(REJECT_SCORES),
            self.reject_score,
        )
        for name, value in (
            ("--target-precision", self.target_precision),
            ("--target-coverage", self.target_coverage),
        ):
            _check(value is None or 0 < value <= 1, name, "in (0, 1]", value)
        if self.target_precision is not None and self.target_coverage is not None:
            raise ConfigError("--target-precision and --target-coverage: choose one")

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
    skipped: int  # files that did not decode
    seconds: float
    calibration: dict[str, Any] | None = None  # temperature, validation ECE before/after
    reject: dict[str, Any] | None = None  # the "unknown" rule and what it did on validation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train(config: TrainConfig) -> TrainResult:
    """Train `config.model` on `config.data` and write the run directory `config.out`."""
    started = time.perf_counter()
    config.check()
    out = Path(config.out)
    if is_run_dir(out) and not config.resume:
        raise ConfigError(f"--out: {out} already holds a run; add --resume or choose another")
    if config.classifier != "softmax":
        return train_head(config)

    # -- set-up: processes and device -----------------------------------------------------
    rank, world, device = _init_distributed(config.device)
    master = rank == 0
    say = console.print if (master and config.progress) else _quiet

    # -- data ---------------------------------------------------------------------------
    splits = find_splits(config.data, config.val_split, config.seed)
    num_classes = len(splits.class_names)

    # -- model, optimizer, schedule ------------------------------------------------------
    resuming = config.resume and (out / RUN_STATE).is_file()
    state = load_run_state(out / RUN_STATE) if resuming else None
    if config.resume and is_run_dir(out):
        _check_same_run(read_run_config(out), config, splits)
    model, preprocess = _initial_model(config, num_classes, fresh=state is None)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    ema = _make_ema(model, config.ema_decay) if config.ema else None
    optimizer = _make_optimizer(model, config)

    augmentation = _choose_augmentation(config, splits, preprocess)
    train_set = ImageFolder(splits.train, train_transform(preprocess, augmentation))
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, seed=config.seed)
    loader_rng = torch.Generator()
    # The global batch is split across processes (rounded up when it does not divide).
    batch_per_process = math.ceil(config.batch_size / world)
    train_loader = _loader(
        train_set, config, device, batch_per_process, sampler=sampler, generator=loader_rng
    )
    val_loader = _eval_loader(splits.val[rank::world], preprocess, config, device)
    steps_per_epoch = len(train_loader)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = min(round(config.warmup_epochs * steps_per_epoch), total_steps // 5)
    schedule = functools.partial(_warmup_cosine, warmup=warmup_steps, total=total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
    class_weights = _class_weights(splits) if config.balance else None
    criterion = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=config.label_smoothing)
    criterion.to(device)
    mix = _make_mix(config.mixup, config.cutmix, num_classes)

    # -- resume or start ------------------------------------------------------------------
    start_epoch, best_score, best_epoch, stale_epochs, rows = 0, -1.0, 0, 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, rows = state["epoch"], state["metrics"]
        best_score, best_epoch = state["best_score"], state["best_epoch"]
        stale_epochs = state["stale_epochs"]
        say(f"resuming {out} after epoch {start_epoch}")
    if world > 1:
        dist.barrier()  # every rank has read `out` before rank 0 writes to it
    if master:
        out.mkdir(parents=True, exist_ok=True)
        run_config = _run_config(config, splits, preprocess, augmentation)
        run_config["batch"] = {
            "global": batch_per_process * world,
            "per_process": batch_per_process,
            "processes": world,
        }
        write_json(out / RUN_CONFIG, run_config)
        _write_metrics(out, rows, ema is not None)  # drops a row logged after the last state
        _write_skipped(out, splits)
    if splits.skipped and master:  # a warning, shown even when progress is off
        console.print(
            f"[yellow]warning:[/yellow] skipped {len(splits.skipped)} file(s) that do not "
            f"decode (listed in {out / 'skipped.txt'})"
        )
    say(
        f"{config.model}: {num_classes} classes, {len(splits.train)} train / "
        f"{len(splits.val)} val images, {preprocess.size[0]} px, {device.type} × {world}, "
        f"batch {batch_per_process * world}"
        + (f" ({batch_per_process} per process)" if world > 1 else "")
    )
    say(f"augmentation: {augmentation.describe()}")
    raw_model = model
    if world > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    # -- the loop -------------------------------------------------------------------------
    epochs_done, last_plot = start_epoch, time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        epoch_started = time.perf_counter()
        # Every random choice of this epoch follows from (seed, epoch, rank): exact resume.
        epoch_seed = config.seed * 1_000_003 + epoch * 1009 + rank
        torch.manual_seed(epoch_seed)
        loader_rng.manual_seed(epoch_seed)
        train_set.transform.set_random_seed(epoch_seed)  # when the loader has no workers
        sampler.set_epoch(epoch)
        _train_mode(raw_model, config.freeze_backbone)

        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, images
        with _epoch_progress(len(train_loader), epoch, config, master) as bar:
            for images, labels in train_loader:
                images = images.to(device, non_blocking=True, memory_format=memory_format)
                labels = labels.to(device, non_blocking=True)
                targets = labels
                if mix is not None:  # soft targets; accuracy is still counted on `labels`
                    images, targets = mix(images, labels)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=config.amp):
                    logits = model(images)
                    loss = criterion(logits, targets)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.clip_grad is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(raw_model.parameters(), config.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if ema is not None:
                    ema.update(raw_model, step=scheduler.last_epoch)

                correct = (logits.argmax(1) == labels).sum().item()
                totals += torch.tensor([loss.item() * len(labels), correct, len(labels)])
                bar(totals, time.perf_counter() - epoch_started)
        train_seconds = time.perf_counter() - epoch_started
        train_loss, train_acc, train_images = _reduce(totals, device)

        # -- evaluate ---------------------------------------------------------------------
        val_loss, val_acc = _evaluate(raw_model, val_loader, device, memory_format, config.amp)
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - epoch_started,
            "images_per_s": train_images / train_seconds,
        }
        score, best_module = val_acc, raw_model
        if ema is not None:  # the averaged weights are what "best" picks, as timm does
            row["ema_val_loss"], row["ema_val_acc"] = _evaluate(
                ema.module, val_loader, device, memory_format, config.amp
            )
            score, best_module = row["ema_val_acc"], ema.module
        rows.append(row)
        epochs_done = epoch + 1
        # Without a validation set the latest weights are the best known.
        improved = score is None or score > best_score
        if improved:
            best_score, best_epoch, stale_epochs = score or 0.0, epoch + 1, 0
        else:
            stale_epochs += 1
        say(_epoch_line(row, config.epochs, improved and bool(splits.val)))

        # -- checkpoint (rank 0; state.pt last: it commits the epoch) ---------------------
        if master:
            if improved:
                save_weights(out / "best.safetensors", best_module.state_dict())
            save_weights(out / "last.safetensors", raw_model.state_dict())
            if ema is not None:
                save_weights(out / "ema.safetensors", ema.module.state_dict())
            _write_metrics(out, rows, ema is not None)
            if time.perf_counter() - last_plot > 60:  # a plot costs ~0.5 s: not every epoch
                _plot_curves(out, rows)
                last_plot = time.perf_counter()
            save_run_state(
                out / RUN_STATE,
                {
                    "epoch": epoch + 1,
                    "model": raw_model.state_dict(),
                    "ema": ema.state_dict() if ema is not None else {},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "stale_epochs": stale_epochs,
                    "metrics": rows,
                },
            )
        if config.patience is not None and splits.val and stale_epochs >= config.patience:
            say(f"early stopping: no better val accuracy for {stale_epochs} epochs")
            break

    # -- the end: curves, test the best weights --------------------------------------------
    if master and rows:
        _plot_curves(out, rows)
    test_accuracy = None
    if splits.test:
        if world > 1:
            dist.barrier()  # rank 0 has written best.safetensors
        best, _ = build_model(str(out), weights=out / "best.safetensors")
        test_loader = _eval_loader(splits.test[rank::world], preprocess, config, device)
        _, test_accuracy = _evaluate(best.to(device), test_loader, device, memory_format, False)
        say(f"test accuracy (best weights, {len(splits.test)} images): {test_accuracy:.4f}")
    if world > 1:
        dist.destroy_process_group()
    trust: dict[str, Any] = {}
    if master and splits.val:
        best, _ = build_model(str(out), weights=out / "best.safetensors")
        trust = _calibrate_network(best.to(device).eval(), out, config, splits, preprocess, device)
    return TrainResult(
        run_dir=str(out),
        epochs=epochs_done,
        best_epoch=best_epoch,
        best_val_accuracy=best_score if splits.val else None,
        test_accuracy=test_accuracy,
        num_train=len(splits.train),
        num_val=len(splits.val),
        skipped=len(splits.skipped),
        seconds=round(time.perf_counter() - started, 3),
        **trust,
    )


# -- set-up helpers -----------------------------------------------------------------------


def _check(ok: bool, name: str, expected: str, got: object) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {expected}, got {got}")


def _quiet(*args: Any, **kwargs: Any) -> None:
    """Output of ranks other than 0, and of runs asked to be quiet."""


def _init_distributed(device: str | None) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1) joins the process group:
    nccl with one GPU per process, else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device.startswith("cuda") if device else torch.cuda.is_available()
    if world == 1:
        return 0, 1, torch.device(device or ("cuda" if use_cuda else "cpu"))
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), world, torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")


def _check_same_run(saved: dict[str, Any], config: TrainConfig, splits: DataSplits) -> None:
    if saved["architecture"] != canonical_name(config.model):
        raise ConfigError(
            f"--resume: {config.out} trained {saved['architecture']}, not {config.model}"
        )
    if saved["class_names"] != splits.class_names:
        raise ConfigError(f"--resume: {config.out} was trained on other classes")


def _initial_model(
    config: TrainConfig, num_classes: int, fresh: bool = True
) -> tuple[nn.Module, Preprocess]:
    """The model a run starts from (the same on every rank): ImageNet weights, a weights
    file, or random; `fresh` False when a resume will load its own state over it."""
    torch.manual_seed(config.seed)
    model, preprocess = build_model(
        config.model,
        pretrained=config.pretrained and fresh and config.weights is None,
        num_classes=num_classes,
        img_size=config.img_size,
    )
    if config.weights is not None and fresh:
        load_initial_weights(model, config.weights, canonical_name(config.model))
    if config.freeze_backbone:
        model.requires_grad_(False)
        classifier_head(model).requires_grad_(True)
    return model, preprocess


def _choose_augmentation(
    config: TrainConfig, splits: DataSplits, preprocess: Preprocess
) -> Augmentation:
    """The preset fitted to the training images: see `transforms.choose_augmentation`."""
    survey = survey_images(splits.train, config.seed) if config.augment != "none" else None
    return choose_augmentation(config.augment, min(preprocess.size), config.hflip, survey)


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters; timm's factory leaves norms and biases
    out of weight decay."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(
        model,
        opt="sgd" if config.optimizer == "sgd" else "adamw",
        lr=config.peak_lr,
        weight_decay=config.weight_decay,
        momentum=0.9,
    )


def _make_ema(model: nn.Module, decay: float) -> nn.Module:
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay, use_warmup=True)


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine to zero."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _class_weights(splits: DataSplits) -> torch.Tensor:
    counts = torch.tensor(splits.class_counts(), dtype=torch.float32)
    return counts.sum() / (len(counts) * counts)


def _make_mix(mixup: float, cutmix: float, num_classes: int) -> nn.Module | None:
    """MixUp and/or CutMix on a batch (torchvision's): (images, labels) → (mixed, soft)."""
    from torchvision.transforms import v2

    choices = []
    if mixup > 0:
        choices.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        choices.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    if not choices:
        return None
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)


def _seed_worker(worker_id: int) -> None:
    """Seed a loader worker's augmentation from the seed torch gave the worker."""
    get_worker_info().dataset.transform.set_random_seed(torch.initial_seed() % 2**32)


def _loader(
    dataset, config: TrainConfig, device: torch.device, batch_size: int, **kwargs: Any
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_seed_worker if config.workers else None,
        **kwargs,
    )


def _eval_loader(samples, preprocess: Preprocess, config: TrainConfig, device: torch.device):
    dataset = ImageFolder(samples, functools.partial(preprocess_image, config=preprocess))
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
    )


def _train_mode(model: nn.Module, freeze_backbone: bool) -> None:
    """Training mode; with a frozen backbone only the head trains, so the backbone's batch
    norm statistics stay as they were too."""
    if freeze_backbone:
        model.eval()
        classifier_head(model).train()
    else:
        model.train()


# -- evaluation and reduction across processes ------------------------------------------


def _reduce(totals: torch.Tensor, device: torch.device) -> tuple[float, float, float]:
    """(mean loss, accuracy, images) over all processes from (loss sum, correct, images)."""
    if dist.is_initialized():
        summed = totals.to(device)
        dist.all_reduce(summed)
        totals = summed.cpu()
    loss_sum, correct, count = totals.tolist()
    return loss_sum / max(count, 1), correct / max(count, 1), count


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    memory_format: torch.memory_format,
    amp: bool,
) -> tuple[float | None, float | None]:
    """(loss, accuracy) of `model` on the validation shards of all processes."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    for images, labels in loader:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            logits = model(images)
        loss = nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        correct = (logits.argmax(1) == labels).sum()
        totals += torch.tensor([loss.item(), correct.item(), len(labels)])
    model.train(was_training)
    loss, accuracy, count = _reduce(totals, device)
    return (loss, accuracy) if count else (None, None)


# -- the run directory --------------------------------------------------------------------


def train_head(config: TrainConfig) -> TrainResult:
    """Fit a scikit-learn classifier (`config.classifier`) on frozen features of the
    pretrained backbone: one pass of feature extraction, no backprop.

    The run directory holds the backbone weights, the head as ONNX (`head.onnx`) and a
    config.json like any other run's, so predict, evaluate and serve use it unchanged.
    """
    import numpy as np

    from imgcls.classifier import ImageClassifier

    started = time.perf_counter()
    if not (config.pretrained or config.weights) or is_run_dir(config.model):
        raise ConfigError("--classifier: a head needs a pretrained registry backbone's features")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--classifier: fitting a head runs in one process, not torchrun")
    say = console.print if config.progress else _quiet
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
    run_config = _run_config(config, splits, backbone.preprocess)
    run_config.update(
        classifier=config.classifier,
        head="head.onnx",
        head_params=head.params,
        head_search=head.search,
        backbone_num_classes=backbone.num_classes,
    )
    trust: dict[str, Any] = {}
    if head.val_proba is not None:
        val_logits = head_log_probabilities(head.val_proba)  # heads give probabilities
        trust = _save_trust(
            out, run_config, config, val_logits, val_y, val_x, train_x, say
        )  # fmt: skip
    write_json(out / RUN_CONFIG, run_config)
    seconds = time.perf_counter() - started
    row = {
        "epoch": 1,
        "train_acc": float((head.pipeline.predict(train_x) == train_y).mean()),
        "val_acc": head.val_accuracy,
        "seconds": seconds,
        "images_per_s": images_per_s,
    }
    _write_metrics(out, [row], ema=False)
    _write_skipped(out, splits)
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


def _calibrate_network(
    model: nn.Module,
    out: Path,
    config: TrainConfig,
    splits: DataSplits,
    preprocess: Preprocess,
    device: torch.device,
) -> dict[str, Any]:
    """Fit the temperature and the "unknown" rule of a trained network on the validation
    split (and, for the k-NN score, keep its features of the training images)."""
    import numpy as np

    say = console.print if config.progress else _quiet
    with_features = config.reject_score == "knn"

    @torch.no_grad()
    def outputs(samples: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits, features, labels = [], [], []
        for images, targets in _eval_loader(samples, preprocess, config, device):
            pooled = pooled_features(model, images.to(device))
            logits.append(classifier_head(model)(pooled).float().cpu().numpy())
            if with_features:
                features.append(pooled.float().cpu().numpy())
            labels.append(targets.numpy())
        stacked = np.concatenate(features) if features else np.zeros((0, 0), np.float32)
        return np.concatenate(logits), np.concatenate(labels), stacked

    val_logits, val_y, val_x = outputs(splits.val)
    train_x = outputs(splits.train)[2] if with_features else None
    run_config = read_run_config(out)
    trust = _save_trust(out, run_config, config, val_logits, val_y, val_x, train_x, say)
    write_json(out / RUN_CONFIG, run_config)
    return trust


def _save_trust(
    out: Path,
    run_config: dict[str, Any],
    config: TrainConfig,
    val_logits: Any,
    val_y: Any,
    val_x: Any,
    train_x: Any,
    say: Any,
) -> dict[str, Any]:
    """Fit calibration and rejection, put them in `run_config` (and the k-NN reference
    file in `out`); returns them for the TrainResult."""
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
    run_config.update(
        temperature=calibration["temperature"], calibration=calibration, reject=reject
    )
    say(
        f"calibration: temperature {calibration['temperature']:.3f}, validation ECE "
        f"{calibration['val_ece_before']:.4f} → {calibration['val_ece_after']:.4f}; "
        f"unknown below {reject['score']} {reject['threshold']:.4f} "
        f"(answers {reject['val_coverage']:.0%} of validation images)"
    )
    return {"calibration": calibration, "reject": reject}


def _fmt(accuracy: float | None) -> str:
    return "n/a" if accuracy is None else f"{accuracy:.4f}"


def _run_config(
    config: TrainConfig,
    splits: DataSplits,
    preprocess: Preprocess,
    augmentation: Augmentation | None = None,
) -> dict:
    """config.json: what it takes to rebuild the model and feed it, and how it was trained."""
    from imgcls import __version__

    return {
        "format": "imgcls-run",
        "imgcls_version": __version__,
        "architecture": canonical_name(config.model),
        "num_classes": len(splits.class_names),
        "class_names": splits.class_names,
        "preprocess": preprocess.to_dict(),
        "img_size": preprocess.size[0],
        "weights": "best.safetensors",
        "ema": config.ema,
        "data": {
            "train": len(splits.train),
            "val": len(splits.val),
            "test": len(splits.test),
            "skipped": len(splits.skipped),
        },
        "train": asdict(config),
        **({"augmentation": augmentation.to_dict()} if augmentation else {}),
    }


def _write_metrics(out: Path, rows: list[dict[str, Any]], ema: bool) -> None:
    columns = METRICS_COLUMNS + (EMA_COLUMNS if ema else ())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    write_text(out / "metrics.csv", buffer.getvalue())


def _csv_value(value: Any) -> Any:
    return "" if value is None else round(value, 6) if isinstance(value, float) else value


def _write_skipped(out: Path, splits: DataSplits) -> None:
    if splits.skipped:
        write_text(out / "skipped.txt", "".join(f"{p}\t{why}\n" for p, why in splits.skipped))


def _plot_curves(out: Path, rows: list[dict[str, Any]]) -> None:
    """curves.png: loss and accuracy per epoch, train and validation."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
        ax.plot(epochs, [r[f"train_{metric}"] for r in rows], "o-", label="train")
        if rows[-1]["val_acc"] is not None:
            ax.plot(epochs, [r[f"val_{metric}"] for r in rows], "o-", label="val")
        if "ema_val_acc" in rows[-1]:
            ax.plot(epochs, [r[f"ema_val_{metric}"] for r in rows], "o-", label="val (EMA)")
        ax.set_xlabel("epoch")
        ax.set_title("loss" if metric == "loss" else "accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save_figure(fig, out / "curves.png")


def _save_figure(fig: Any, path: Path) -> None:
    from matplotlib import pyplot as plt

    from imgcls.checkpoint import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


# -- progress -----------------------------------------------------------------------------


class _epoch_progress:
    """A rich progress bar for one epoch (stderr, rank 0, only on a terminal)."""

    def __init__(self, steps: int, epoch: int, config: TrainConfig, master: bool) -> None:
        enabled = master and config.progress and console.is_terminal
        self.bar = Progress(
            TextColumn(f"[bold]epoch {epoch + 1}/{config.epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not enabled,
        )
        self.task = self.bar.add_task("train", total=steps, stats="")

    def __enter__(self):
        self.bar.start()

        def advance(totals: torch.Tensor, seconds: float) -> None:
            loss_sum, correct, count = totals.tolist()
            stats = (
                f"loss {loss_sum / count:.4f} acc {correct / count:.3f} {count / seconds:.0f} img/s"
            )
            self.bar.update(self.task, advance=1, stats=stats)

        return advance

    def __exit__(self, *exc_info: Any) -> None:
        self.bar.stop()


def _epoch_line(row: dict[str, Any], epochs: int, best: bool) -> str:
    parts = [
        f"epoch {row['epoch']}/{epochs}",
        f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}",
    ]
    if row["val_acc"] is not None:
        parts.append(f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}")
    if "ema_val_acc" in row:
        parts.append(f"ema acc {row['ema_val_acc']:.4f}")
    parts.append(f"lr {row['lr']:.2e}  {row['images_per_s']:.0f} img/s  {row['seconds']:.1f}s")
    return " | ".join(parts) + ("  [green]best[/green]" if best else "")


# -- learning-rate range test -------------------------------------------------------------


def _valley(losses: list[float]) -> int:
    """fastai's "valley" suggestion: the longest stretch over which the loss keeps falling
    (longest decreasing subsequence), and a point a half of the way into its middle third."""
    n = len(losses)
    run = [1] * n  # length of the longest decreasing subsequence ending at i
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[i] > run[end]:
            end = i
            start = end - run[end]
    third = (end - start) / 3
    return min(n - 1, max(0, start + int(third) + int(third / 2)))


def _forever(loader: DataLoader):
    """Batches of `loader`, epoch after epoch."""
    while True:
        yield from loader


@dataclass
class LRFinderResult:
    suggested_lr: float  # where the smoothed loss falls fastest
    plot: str  # lr_find.png
    lrs: list[float]
    losses: list[float]


def find_lr(
    config: TrainConfig, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100
) -> LRFinderResult:
    """fastai-style LR range test: raise the LR exponentially step by step from `start_lr`
    while recording the smoothed loss, stop when it diverges, and suggest an LR in the
    valley where the loss falls (fastai's default). Writes `lr_find.png` into `config.out`;
    trains nothing to keep."""
    config.check()
    splits = find_splits(config.data, config.val_split, config.seed)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, preprocess = _initial_model(config, len(splits.class_names))
    model.to(device)
    _train_mode(model, config.freeze_backbone)
    optimizer = _make_optimizer(model, config)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    augmentation = _choose_augmentation(config, splits, preprocess)
    train_set = ImageFolder(splits.train, train_transform(preprocess, augmentation, config.seed))
    loader = _loader(train_set, config, device, config.batch_size, shuffle=True, drop_last=False)

    gamma = (end_lr / start_lr) ** (1 / (steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed, best = 0.0, math.inf
    for step, (images, labels) in zip(range(steps), _forever(loader), strict=False):
        lr = start_lr * gamma**step
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = criterion(model(images.to(device)), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        smoothed = 0.98 * smoothed + 0.02 * loss.item()
        value = smoothed / (1 - 0.98 ** (step + 1))  # bias-corrected running mean
        lrs.append(lr)
        losses.append(value)
        best = min(best, value)
        if not math.isfinite(value) or value > 4 * best:  # diverged: the test is over
            break
    index = _valley(losses)
    suggested = lrs[index]

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    ax.plot([suggested], [losses[index]], "ro", label=f"suggested {suggested:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, out / "lr_find.png")
    return LRFinderResult(suggested, str(out / "lr_find.png"), lrs, losses)
