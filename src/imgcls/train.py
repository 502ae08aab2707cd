"""Training: image folders in, a run directory out. Read it top to bottom: set-up, the
loop (train, evaluate, checkpoint), the end (test and calibrate the best weights).
Beside it: `train_config.py` (`TrainConfig`, the settings and their checks),
`train_head.py` (a classical head on frozen features instead of backprop), `lr_find.py`
(the LR range test); `checkpoint.py` writes the run directory, `plots.py` its curves.

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

import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, get_worker_info

from imgcls import plots
from imgcls.calibration import KNN_REFERENCE, fit_trust, sigmoid
from imgcls.checkpoint import (
    RUN_CONFIG,
    RUN_STATE,
    is_run_dir,
    load_run_state,
    new_run_config,
    read_run_config,
    save_run_state,
    save_weights,
    write_json,
    write_metrics,
    write_skipped,
)
from imgcls.data import DataSplits, ImageFolder, find_splits
from imgcls.models import (
    build_model,
    canonical_name,
    classifier_head,
    load_initial_weights,
    pooled_features,
)
from imgcls.train_config import ConfigError, TrainConfig
from imgcls.transforms import (
    Augmentation,
    Preprocess,
    choose_augmentation,
    preprocess_image,
    survey_images,
    train_transform,
)

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "make_criterion", "read_splits", "train"]

console = Console(stderr=True, highlight=False, soft_wrap=True)


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


def train(config: TrainConfig) -> TrainResult:
    """Train `config.model` on `config.data` and write the run directory `config.out`."""
    started = time.perf_counter()
    config.check()
    out = Path(config.out)
    if is_run_dir(out) and not config.resume:
        raise ConfigError(
            f"`out`: {out} already holds a run; set `resume` or choose another",
            parameters=("out", "resume"),
        )
    if config.classifier != "softmax":  # a head is fitted on features, not trained here
        from imgcls.train_head import train_head  # (imported here: it imports this module)

        return train_head(config)

    # -- set-up: processes and device -----------------------------------------------------
    rank, world, device = _init_distributed(config.device)
    master = rank == 0
    say = reporter(config, master)

    # -- data ---------------------------------------------------------------------------
    splits = read_splits(config)
    num_classes = len(splits.class_names)
    multi_label = splits.multi_label
    if multi_label:
        config.check_multi_label()
    targets_size = splits.targets_size  # ImageFolder's multi-hot targets, or None

    # -- model, optimizer, schedule ------------------------------------------------------
    resuming = config.resume and (out / RUN_STATE).is_file()
    state = load_run_state(out / RUN_STATE) if resuming else None
    if config.resume and is_run_dir(out):
        _check_same_run(read_run_config(out), config, splits)
    model, preprocess = initial_model(config, num_classes, fresh=state is None)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    ema = _make_ema(model, config.ema_decay) if config.ema else None
    optimizer = make_optimizer(model, config)

    augmentation = make_augmentation(config, splits, preprocess)
    train_set = ImageFolder(splits.train, train_transform(preprocess, augmentation), targets_size)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, seed=config.seed)
    loader_rng = torch.Generator()
    # The global batch is split across processes (rounded up when it does not divide).
    batch_per_process = math.ceil(config.batch_size / world)
    train_loader = make_loader(
        train_set, config, device, batch_per_process, sampler=sampler, generator=loader_rng
    )
    val_loader = _eval_loader(splits.val[rank::world], preprocess, config, device, targets_size)
    scheduler = _make_scheduler(optimizer, config, steps_per_epoch=len(train_loader))
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
    criterion = make_criterion(config, splits).to(device)
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
        config_json = new_run_config(
            canonical_name(config.model), splits, preprocess, asdict(config), augmentation
        )
        config_json["batch"] = {
            "global": batch_per_process * world,
            "per_process": batch_per_process,
            "processes": world,
        }
        write_json(out / RUN_CONFIG, config_json)
        # (drops a row logged after the last state)
        write_metrics(out, rows, ema is not None, multi_label)
        write_skipped(out, splits.skipped)
    if splits.skipped and master:  # a warning, shown even when progress is off
        console.print(
            f"[yellow]warning:[/yellow] skipped {len(splits.skipped)} file(s) that are "
            f"missing or do not decode (listed in {out / 'skipped.txt'})"
        )
    if multi_label:
        several = sum(len(label) > 1 for _, label in splits.train + splits.val + splits.test)
        say(
            f"multi-label: {several} image(s) carry several labels"
            + ("" if several else " (--multi-label)")
            + "; sigmoid outputs, binary cross-entropy, per-class thresholds"
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
    evaluate = functools.partial(  # on the validation set, the model's or the EMA's weights
        _evaluate, loader=val_loader, device=device, memory_format=memory_format,
        amp=config.amp, multi_label=multi_label,
    )  # fmt: skip
    epochs_done, last_plot = start_epoch, time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        epoch_started = time.perf_counter()
        # Every random choice of this epoch follows from (seed, epoch, rank): exact resume.
        epoch_seed = config.seed * 1_000_003 + epoch * 1009 + rank
        torch.manual_seed(epoch_seed)
        loader_rng.manual_seed(epoch_seed)
        train_set.transform.set_random_seed(epoch_seed)  # when the loader has no workers
        sampler.set_epoch(epoch)
        set_train_mode(raw_model, config.freeze_backbone)
        with _epoch_progress(len(train_loader), epoch, config, master) as bar:
            totals = _train_epoch(
                model, train_loader, criterion, optimizer, scheduler, scaler,
                mix=mix, ema=ema, config=config, device=device, memory_format=memory_format,
                progress=bar,
            )  # fmt: skip
        train_seconds = time.perf_counter() - epoch_started
        train_loss, train_acc, train_images = _reduce(totals, device)

        # -- evaluate ---------------------------------------------------------------------
        val_loss, val_acc, val_map = evaluate(raw_model)
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
        if multi_label:
            row["val_map"] = val_map
        best_module, prefix = raw_model, "val"
        if ema is not None:  # the averaged weights are what "best" picks, as timm does
            ema_loss, ema_acc, ema_map = evaluate(ema.module)
            row.update(ema_val_loss=ema_loss, ema_val_acc=ema_acc)
            if multi_label:
                row["ema_val_map"] = ema_map
            best_module, prefix = ema.module, "ema_val"
        # Multi-label: mean average precision, which no threshold choice sways, picks.
        score = row[f"{prefix}_map" if multi_label else f"{prefix}_acc"]
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
            write_metrics(out, rows, ema is not None, multi_label)
            if time.perf_counter() - last_plot > 60:  # a plot costs ~0.5 s: not every epoch
                plots.curves(rows, out / "curves.png")
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
            score_name = "mAP" if multi_label else "accuracy"
            say(f"early stopping: no better val {score_name} for {stale_epochs} epochs")
            break

    # -- the end: curves; the best weights, loaded once, on the test set and calibrated ---
    if master and rows:
        plots.curves(rows, out / "curves.png")
    if world > 1 and splits.test:
        dist.barrier()  # rank 0 has written best.safetensors
    if splits.test or (master and splits.val):  # the test pass, the calibration
        best, _ = build_model(str(out), weights=out / "best.safetensors")
        best.to(device).eval()
    test_accuracy = test_map = None
    if splits.test:
        test_loader = _eval_loader(
            splits.test[rank::world], preprocess, config, device, targets_size
        )
        _, test_accuracy, test_map = _evaluate(
            best, test_loader, device, memory_format, amp=False, multi_label=multi_label
        )
        say(
            f"test accuracy (best weights, {len(splits.test)} images): {test_accuracy:.4f}"
            + (f", mAP {test_map:.4f}" if test_map is not None else "")
        )
    if world > 1:
        # Every rank out of its last collective before any tears the group down (a rank
        # that closes its gloo connections while another still reads from them fails it).
        dist.barrier()
        dist.destroy_process_group()
    trust: dict[str, Any] = {}
    if master and splits.val:
        trust = _calibrate_network(best, out, config, splits, preprocess, device)
    best_row = rows[best_epoch - 1] if splits.val and best_epoch else {}
    prefix = "ema_val" if ema is not None else "val"
    return TrainResult(
        run_dir=str(out),
        epochs=epochs_done,
        best_epoch=best_epoch,
        best_val_accuracy=best_row.get(f"{prefix}_acc"),
        test_accuracy=test_accuracy,
        num_train=len(splits.train),
        num_val=len(splits.val),
        skipped=len(splits.skipped),
        seconds=round(time.perf_counter() - started, 3),
        multi_label=multi_label,
        best_val_map=best_row.get(f"{prefix}_map"),
        test_map=test_map,
        **trust,
    )


def _train_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    *,
    mix: nn.Module | None,
    ema: nn.Module | None,
    config: TrainConfig,
    device: torch.device,
    memory_format: torch.memory_format,
    progress: Callable[[torch.Tensor], None],
) -> torch.Tensor:
    """One pass over this process's share of the training set, an optimizer step a batch;
    returns this process's (loss sum, correct, images) (multi-label: correct per label, as
    a share of the classes)."""
    # DDP's wrapper runs the forward pass (it averages gradients in backward); clipping and
    # the EMA take the bare model.
    raw_model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    totals = torch.zeros(3, dtype=torch.float64)
    for images, labels in loader:
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

        totals += torch.tensor([loss.item() * len(labels), _correct(logits, labels), len(labels)])
        progress(totals)
    return totals


# -- set-up helpers (those without a leading underscore: lr_find.py uses them too) ------


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
            f"`resume`: {config.out} trained {saved['architecture']}, not {config.model}",
            parameters=("resume",),
        )
    if saved["class_names"] != splits.class_names:
        raise ConfigError(
            f"`resume`: {config.out} was trained on other classes", parameters=("resume",)
        )


def initial_model(
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


def make_augmentation(
    config: TrainConfig, splits: DataSplits, preprocess: Preprocess
) -> Augmentation:
    """The preset fitted to the training images: see `transforms.choose_augmentation`."""
    samples = splits.train
    if splits.multi_label:  # the survey compares whole label sets: one number for each
        numbers: dict[Any, int] = {}
        samples = [(path, numbers.setdefault(label, len(numbers))) for path, label in samples]
    survey = survey_images(samples, config.seed) if config.augment != "none" else None
    return choose_augmentation(config.augment, min(preprocess.size), config.hflip, survey)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
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


def _make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `config.warmup_epochs` (at most a fifth of the steps), then
    cosine decay to zero at the last step; stepped once a batch."""
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = min(round(config.warmup_epochs * steps_per_epoch), total_steps // 5)
    schedule = functools.partial(_warmup_cosine, warmup=warmup_steps, total=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine to zero."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def read_splits(config: TrainConfig) -> DataSplits:
    """The samples of `config.data`, a data folder or a label file."""
    return find_splits(
        config.data,
        config.val_split,
        config.seed,
        multi_label=config.multi_label,
        label_delim=config.label_delim,
        skip_missing=config.skip_missing,
    )


def make_criterion(config: TrainConfig, splits: DataSplits) -> nn.Module:
    """Cross-entropy (weighted by inverse class frequency with `balance`, smoothed with
    `label_smoothing`), or for a multi-label run binary cross-entropy on every class's
    logit, each class a yes/no question of its own."""
    if splits.multi_label:
        return nn.BCEWithLogitsLoss()
    weights = _class_weights(splits) if config.balance else None
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)


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


def make_loader(
    dataset, config: TrainConfig, device: torch.device, batch_size: int, **kwargs: Any
) -> DataLoader:
    """A training loader: `config.workers` processes, each seeding its augmentation."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_seed_worker if config.workers else None,
        **kwargs,
    )


def _eval_loader(
    samples,
    preprocess: Preprocess,
    config: TrainConfig,
    device: torch.device,
    targets_size: int | None = None,
):
    transform = functools.partial(preprocess_image, config=preprocess)
    dataset = ImageFolder(samples, transform, targets_size)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
    )


def set_train_mode(model: nn.Module, freeze_backbone: bool) -> None:
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


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Right answers in a batch: top-1 hits, or for multi-hot `labels` the share of right
    per-class decisions (logit > 0, i.e. probability > 0.5) summed over the images."""
    if labels.ndim == 2:
        return ((logits > 0) == (labels > 0.5)).float().mean(dim=1).sum().item()
    return (logits.argmax(1) == labels).sum().item()


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    memory_format: torch.memory_format,
    amp: bool,
    multi_label: bool = False,
) -> tuple[float | None, float | None, float | None]:
    """(loss, accuracy, mAP) of `model` on the validation shards of all processes. For a
    multi-label model: binary cross-entropy, per-label accuracy and the mean average
    precision; mAP is None for a single-label one."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    probabilities, targets = [], []  # multi-label: what mAP needs
    for images, labels in loader:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            logits = model(images)
        logits = logits.float()
        if multi_label:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
            loss = loss.mean(dim=1).sum()  # per image, as BCEWithLogitsLoss averages
            probabilities.append(torch.sigmoid(logits).cpu().numpy())
            targets.append(labels.cpu().numpy())
        else:
            loss = nn.functional.cross_entropy(logits, labels, reduction="sum")
        totals += torch.tensor([loss.item(), _correct(logits, labels), len(labels)])
    model.train(was_training)
    loss, accuracy, count = _reduce(totals, device)
    if not count:
        return None, None, None
    return loss, accuracy, _gathered_map(probabilities, targets) if multi_label else None


def _gathered_map(probabilities: list, targets: list) -> float | None:
    """Mean average precision over the validation shards of all processes (it does not
    add up across shards, so every process gathers all the outputs)."""
    import numpy as np

    from imgcls.multilabel import mean_average_precision

    shard = [(p, t) for p, t in zip(probabilities, targets, strict=True)]
    if dist.is_initialized():
        shards: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(shards, shard)
        shard = [batch for part in shards for batch in part]
    return mean_average_precision(
        np.concatenate([t for _, t in shard]), np.concatenate([p for p, _ in shard])
    )


# -- calibration: the temperature and the "unknown" rule, fitted on the validation split -


def _calibrate_network(
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
    import numpy as np

    with_features = config.reject_score == "knn" and not splits.multi_label

    @torch.no_grad()
    def outputs(samples: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits, features, labels = [], [], []
        loader = _eval_loader(samples, preprocess, config, device, splits.targets_size)
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
        return _fit_thresholds(config_json, config, sigmoid(val_logits), val_y)
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
    say = reporter(config)  # (rank 0 alone calibrates)
    say(
        f"calibration: temperature {calibration['temperature']:.3f}, validation ECE "
        f"{calibration['val_ece_before']:.4f} → {calibration['val_ece_after']:.4f}; "
        f"unknown below {reject['score']} {reject['threshold']:.4f} "
        f"(answers {reject['val_coverage']:.0%} of validation images)"
    )
    return {"calibration": calibration, "reject": reject}


def _fit_thresholds(
    config_json: dict[str, Any], config: TrainConfig, probabilities: Any, targets: Any
) -> dict[str, Any]:
    """Each class's threshold, chosen where its validation F1 is highest, into
    `config_json` with what the thresholds achieve on validation."""
    from imgcls.multilabel import choose_thresholds, multilabel_metrics

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


# -- progress -----------------------------------------------------------------------------


def reporter(config: TrainConfig, master: bool = True) -> Callable[..., None]:
    """Where progress lines go: the console on rank 0 of a run with progress on, else
    nowhere."""
    return console.print if master and config.progress else _quiet


def _quiet(*args: Any, **kwargs: Any) -> None:
    """Output of ranks other than 0, and of runs asked to be quiet."""


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

    def __enter__(self) -> Callable[[torch.Tensor], None]:
        self.bar.start()
        started = time.perf_counter()

        def advance(totals: torch.Tensor) -> None:
            """One step done; `totals`: (loss sum, correct, images) so far this epoch."""
            loss_sum, correct, count = totals.tolist()
            speed = count / (time.perf_counter() - started)
            stats = f"loss {loss_sum / count:.4f} acc {correct / count:.3f} {speed:.0f} img/s"
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
    if row.get("val_map") is not None:
        parts.append(f"mAP {row['val_map']:.4f}")
    if "ema_val_acc" in row:
        parts.append(f"ema acc {row['ema_val_acc']:.4f}")
    parts.append(f"lr {row['lr']:.2e}  {row['images_per_s']:.0f} img/s  {row['seconds']:.1f}s")
    return " | ".join(parts) + ("  [green]best[/green]" if best else "")
