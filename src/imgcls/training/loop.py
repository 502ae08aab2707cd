"""Training: image folders in, a run directory out. `train()` reads top to bottom: set-up,
resume, the loop (train an epoch, evaluate, checkpoint), the end (test and calibrate the
best weights). Beside it in `imgcls.training`: `config` (`TrainConfig`, the settings and
their checks; `TrainResult`), `setup` (processes, data, model, optimizer and the other
pieces a run is built from), `report` (console lines, the epoch's bar), `calibrate`
(temperature, "unknown" rule, thresholds), `heads` (a classical head on frozen features
instead of backprop), `lr_find` (the LR range test) and `run_writer` (the run directory's
files); `imgcls.reports.plots` draws its curves.

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

(DATA must be readable on every machine; rank 0 alone writes the run directory.) The lines
that exist only for DDP are marked `# DDP:`.

Reproducibility: every random choice of an epoch (shuffle, augmentation, dropout, mixup)
is seeded from (seed, epoch, rank), so a resumed run repeats the interrupted epoch exactly
as it would have run; the model, EMA, optimizer, scheduler and counters come back from
`state.pt`, written last and atomically at the end of every epoch.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from imgcls.data.augment import Augmentation, train_transform
from imgcls.data.datasets import DataSplits, ImageFolder
from imgcls.data.preprocess import Preprocess
from imgcls.errors import ConfigError
from imgcls.files import write_json
from imgcls.models.registry import build_model, canonical_name
from imgcls.models.run_dir import RUN_CONFIG, is_run_dir, read_run_config
from imgcls.models.weights import save_weights
from imgcls.reports import plots
from imgcls.training.calibrate import calibrate_network
from imgcls.training.config import TrainConfig, TrainResult
from imgcls.training.distill import Teacher
from imgcls.training.heads import train_head
from imgcls.training.report import console, epoch_line, epoch_progress, reporter
from imgcls.training.run_writer import (
    RUN_STATE,
    load_run_state,
    new_run_config,
    save_run_state,
    write_metrics,
    write_skipped,
)
from imgcls.training.setup import (
    check_same_run,
    eval_loader,
    init_distributed,
    initial_model,
    make_augmentation,
    make_criterion,
    make_ema,
    make_loader,
    make_mix,
    make_optimizer,
    make_scheduler,
    read_splits,
    set_train_mode,
)
from imgcls.training.tracking import open_tracking
from imgcls.trust.multilabel import mean_average_precision

__all__ = ["EpochCallback", "train"]

# Called after every epoch with (epoch, 1-based; validation score that picks the best:
# accuracy, or mAP for a multi-label run; None without a validation set). `imgcls tune`
# prunes a trial from here: an exception it raises ends the training.
EpochCallback = Callable[[int, float | None], None]


def train(config: TrainConfig, on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train `config.model` on `config.data` and write the run directory `config.out`;
    `on_epoch` hears each epoch's validation score."""
    started = time.perf_counter()
    config.check()
    out = Path(config.out)
    if is_run_dir(out) and not config.resume:
        raise ConfigError(
            f"`out`: {out} already holds a run; set `resume` or choose another",
            parameters=("out", "resume"),
        )
    if config.classifier != "softmax":  # a head is fitted on features, not trained here
        return train_head(config)

    # -- set-up: processes, data, model, optimizer ----------------------------------------
    rank, world, device = init_distributed(config.device)  # DDP: joins the process group
    master = rank == 0
    say = reporter(config, master)
    tracking = open_tracking(config, master)  # MLflow, TensorBoard: rank 0 reports
    splits = read_splits(config)
    multi_label = splits.multi_label
    if multi_label:
        config.check_multi_label()
    resuming = config.resume and (out / RUN_STATE).is_file()
    state = load_run_state(out / RUN_STATE) if resuming else None
    if config.resume and is_run_dir(out):
        check_same_run(read_run_config(out), config, splits)
    run = _set_up(config, splits, rank, world, device, fresh=state is None)

    # -- resume or start ------------------------------------------------------------------
    start_epoch, history = 0, _History()
    if state is not None:
        start_epoch, history = _resume(run, state)
        say(f"resuming {out} after epoch {start_epoch}")
    if world > 1:
        dist.barrier()  # DDP: every rank has read `out` before rank 0 writes to it
    if master:
        _start_run_dir(out, config, splits, run, world, history)
    _announce(config, splits, run, device, world, master)
    tracking.start(config, splits)
    model = run.model
    if world > 1:  # DDP: the wrapper runs the forward pass and averages gradients
        device_ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(run.model, device_ids=device_ids)

    # -- the loop -------------------------------------------------------------------------
    evaluate = functools.partial(  # on the validation set, the model's or the EMA's weights
        _evaluate, loader=run.val_loader, device=device, memory_format=run.memory_format,
        amp=config.amp, multi_label=multi_label,
    )  # fmt: skip
    epochs_done, last_plot = start_epoch, time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        epoch_started = time.perf_counter()
        # Every random choice of this epoch follows from (seed, epoch, rank): exact resume.
        epoch_seed = config.seed * 1_000_003 + epoch * 1009 + rank
        torch.manual_seed(epoch_seed)
        run.loader_rng.manual_seed(epoch_seed)
        run.train_set.transform.set_random_seed(epoch_seed)  # when the loader has no workers
        run.sampler.set_epoch(epoch)
        set_train_mode(run.model, config.freeze_backbone)
        with epoch_progress(len(run.train_loader), epoch, config, master) as step_done:
            totals = _train_epoch(model, run, config, device, progress=step_done)
        train_seconds = time.perf_counter() - epoch_started
        reduced = _reduce(totals, device)  # DDP: summed over the processes

        # -- evaluate ---------------------------------------------------------------------
        row = _epoch_row(
            epoch, reduced, evaluate(run.model), run, epoch_started, train_seconds, multi_label
        )
        best_module, prefix = run.model, "val"
        if run.ema is not None:  # the averaged weights are what "best" picks, as timm does
            row.update(_ema_columns(evaluate(run.ema.module), multi_label))
            best_module, prefix = run.ema.module, "ema_val"
        # Multi-label: mean average precision, which no threshold choice sways, picks.
        score = row[f"{prefix}_map" if multi_label else f"{prefix}_acc"]
        improved = history.record(row, score)
        epochs_done = epoch + 1
        say(epoch_line(row, config.epochs, improved and bool(splits.val)))
        tracking.log_epoch(row)
        if on_epoch is not None:
            try:
                on_epoch(epochs_done, score)
            except BaseException:
                tracking.finish(None)  # the caller ends the run here (a pruned trial)
                raise

        # -- checkpoint (rank 0; state.pt last: it commits the epoch) ---------------------
        if master:
            last_plot = _checkpoint(
                out, run, history, improved, best_module, last_plot, multi_label
            )
        if config.patience is not None and splits.val and history.stale_epochs >= config.patience:
            score_name = "mAP" if multi_label else "accuracy"
            say(f"early stopping: no better val {score_name} for {history.stale_epochs} epochs")
            break

    # -- the end: curves; the best weights, loaded once, on the test set and calibrated ---
    if master and history.rows:
        plots.curves(history.rows, out / "curves.png")
    if world > 1 and splits.test:
        dist.barrier()  # DDP: rank 0 has written best.safetensors
    if splits.test or (master and splits.val):  # the test pass, the calibration
        best, _ = build_model(str(out), weights=out / "best.safetensors")
        best.to(device).eval()
    test_accuracy = test_map = None
    if splits.test:
        test_accuracy, test_map = _test(best, splits, rank, world, run, config, device)
    if world > 1:
        # DDP: every rank out of its last collective before any tears the group down (a
        # rank that closes its gloo connections while another still reads from them fails).
        dist.barrier()
        dist.destroy_process_group()
    trust: dict[str, Any] = {}
    if master and splits.val:
        trust = calibrate_network(best, out, config, splits, run.preprocess, device)
    result = _result(
        out, splits, history, epochs_done, run, (test_accuracy, test_map), trust, started
    )
    tracking.log_artifacts(out, splits)
    tracking.finish(result)
    return result


# -- what set-up builds, and the run's history -------------------------------------------


@dataclass
class _Run:
    """The pieces of a run on this process, built once by `_set_up`."""

    model: nn.Module  # the bare model (DDP wraps it for the forward pass)
    preprocess: Preprocess
    augmentation: Augmentation
    ema: nn.Module | None  # timm's ModelEmaV3 with `ema`, else None
    optimizer: torch.optim.Optimizer
    train_set: ImageFolder
    sampler: DistributedSampler  # this process's shard of the training set
    loader_rng: torch.Generator  # reseeded every epoch: exact resume
    batch_per_process: int
    train_loader: DataLoader
    val_loader: DataLoader  # this process's shard of the validation set
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    mix: nn.Module | None  # MixUp and/or CutMix, or None
    memory_format: torch.memory_format
    teacher: Teacher | None  # distillation: the run that teaches, or None


@dataclass
class _History:
    """The epochs so far and the best of them: what state.pt keeps beside the weights."""

    rows: list[dict[str, Any]] = field(default_factory=list)  # one metrics row an epoch
    best_score: float = -1.0  # validation accuracy (multi-label: mAP) of the best epoch
    best_epoch: int = 0  # 1-based; 0 before the first
    stale_epochs: int = 0  # epochs since the best, for `patience`

    def record(self, row: dict[str, Any], score: float | None) -> bool:
        """Add an epoch's row; True when its `score` is the best yet (always without a
        validation set: the latest weights are the best known)."""
        self.rows.append(row)
        improved = score is None or score > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.stale_epochs = score or 0.0, row["epoch"], 0
        else:
            self.stale_epochs += 1
        return improved


def _set_up(
    config: TrainConfig,
    splits: DataSplits,
    rank: int,
    world: int,
    device: torch.device,
    fresh: bool,
) -> _Run:
    """Model (on `device`), EMA, optimizer, loaders (this rank's shards), schedule, scaler,
    loss and mixing; `fresh` False when a resume loads its state over them."""
    model, preprocess = initial_model(config, len(splits.class_names), fresh=fresh)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    ema = make_ema(model, config.ema_decay) if config.ema else None
    optimizer = make_optimizer(model, config)
    augmentation = make_augmentation(config, splits, preprocess)
    transform = train_transform(preprocess, augmentation)
    train_set = ImageFolder(splits.train, transform, splits.targets_size)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, seed=config.seed)
    loader_rng = torch.Generator()
    # The global batch is split across processes (rounded up when it does not divide).
    batch_per_process = math.ceil(config.batch_size / world)
    train_loader = make_loader(
        train_set, config, device, batch_per_process, sampler=sampler, generator=loader_rng
    )
    val_shard = splits.val[rank::world]
    val_loader = eval_loader(val_shard, preprocess, config, device, splits.targets_size)
    return _Run(
        model=model, preprocess=preprocess, augmentation=augmentation, ema=ema,
        optimizer=optimizer, train_set=train_set, sampler=sampler, loader_rng=loader_rng,
        batch_per_process=batch_per_process, train_loader=train_loader, val_loader=val_loader,
        scheduler=make_scheduler(optimizer, config, steps_per_epoch=len(train_loader)),
        scaler=torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda"),
        criterion=make_criterion(config, splits).to(device),
        mix=make_mix(config.mixup, config.cutmix, len(splits.class_names)),
        memory_format=memory_format,
        teacher=Teacher(
            config.teacher, splits.class_names, preprocess, device,
            config.distill_temperature, config.distill_weight,
        ) if config.teacher else None,
    )  # fmt: skip


def _resume(run: _Run, state: dict[str, Any]) -> tuple[int, _History]:
    """Load the weights, EMA, optimizer, schedule and scaler of `state.pt` into `run`;
    the epochs done and the history so far."""
    run.model.load_state_dict(state["model"])
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    history = _History(
        state["metrics"], state["best_score"], state["best_epoch"], state["stale_epochs"]
    )
    return state["epoch"], history


def _start_run_dir(
    out: Path, config: TrainConfig, splits: DataSplits, run: _Run, world: int, history: _History
) -> None:
    """config.json, metrics.csv (drops a row logged after the last state) and the list of
    skipped files: what the run directory holds before the first epoch (rank 0)."""
    out.mkdir(parents=True, exist_ok=True)
    config_json = new_run_config(
        canonical_name(config.model), splits, run.preprocess, asdict(config), run.augmentation
    )
    config_json["batch"] = {
        "global": run.batch_per_process * world,
        "per_process": run.batch_per_process,
        "processes": world,
    }
    write_json(out / RUN_CONFIG, config_json)
    write_metrics(out, history.rows, run.ema is not None, splits.multi_label)
    write_skipped(out, splits.skipped)


def _announce(
    config: TrainConfig,
    splits: DataSplits,
    run: _Run,
    device: torch.device,
    world: int,
    master: bool,
) -> None:
    """What this run is: skipped files (a warning, shown even when progress is off), the
    multi-label reading, model, data, device, batch and augmentation."""
    say = reporter(config, master)
    if splits.skipped and master:
        console.print(
            f"[yellow]warning:[/yellow] skipped {len(splits.skipped)} file(s) that are "
            f"missing or do not decode (listed in {Path(config.out) / 'skipped.txt'})"
        )
    if splits.multi_label:
        several = sum(len(label) > 1 for _, label in splits.train + splits.val + splits.test)
        say(
            f"multi-label: {several} image(s) carry several labels"
            + ("" if several else " (--multi-label)")
            + "; sigmoid outputs, binary cross-entropy, per-class thresholds"
        )
    batch = run.batch_per_process
    say(
        f"{config.model}: {len(splits.class_names)} classes, {len(splits.train)} train / "
        f"{len(splits.val)} val images, {run.preprocess.size[0]} px, {device.type} × {world}, "
        f"batch {batch * world}" + (f" ({batch} per process)" if world > 1 else "")
    )
    say(f"augmentation: {run.augmentation.describe()}")


# -- an epoch: train, evaluate, checkpoint -----------------------------------------------


def _train_epoch(
    model: nn.Module,
    run: _Run,
    config: TrainConfig,
    device: torch.device,
    progress: Callable[[torch.Tensor], None],
) -> torch.Tensor:
    """One pass over this process's share of the training set, an optimizer step a batch;
    returns this process's (loss sum, correct, images) (multi-label: correct per label, as
    a share of the classes). `model` is `run.model`, or DDP's wrapper around it."""
    # DDP's wrapper runs the forward pass (it averages gradients in backward); clipping and
    # the EMA take the bare model.
    optimizer, scheduler, scaler, ema = run.optimizer, run.scheduler, run.scaler, run.ema
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    totals = torch.zeros(3, dtype=torch.float64)
    for images, labels in run.train_loader:
        images = images.to(device, non_blocking=True, memory_format=run.memory_format)
        labels = labels.to(device, non_blocking=True)
        targets = labels
        if run.mix is not None:  # soft targets; accuracy is still counted on `labels`
            images, targets = run.mix(images, labels)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=config.amp):
            logits = model(images)
            loss = run.criterion(logits, targets)
            if run.teacher is not None:  # distillation: the teacher's softened outputs too
                loss = run.teacher.loss(loss, logits, images)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.clip_grad is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(run.model.parameters(), config.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update(run.model, step=scheduler.last_epoch)

        totals += torch.tensor([loss.item() * len(labels), _correct(logits, labels), len(labels)])
        progress(totals)
    return totals


def _epoch_row(
    epoch: int,
    reduced: tuple[float, float, float],
    val: tuple[float | None, float | None, float | None],
    run: _Run,
    started: float,
    train_seconds: float,
    multi_label: bool,
) -> dict[str, Any]:
    """The metrics row of an epoch from its (train loss, accuracy, images) over all
    processes and its validation (loss, accuracy, mAP)."""
    train_loss, train_acc, train_images = reduced
    val_loss, val_acc, val_map = val
    row = {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "lr": run.optimizer.param_groups[0]["lr"],
        "seconds": time.perf_counter() - started,
        "images_per_s": train_images / train_seconds,
    }
    if multi_label:
        row["val_map"] = val_map
    return row


def _ema_columns(
    val: tuple[float | None, float | None, float | None], multi_label: bool
) -> dict[str, Any]:
    """The EMA weights' validation loss, accuracy (and mAP) as metrics columns."""
    ema_loss, ema_acc, ema_map = val
    return {
        "ema_val_loss": ema_loss,
        "ema_val_acc": ema_acc,
        **({"ema_val_map": ema_map} if multi_label else {}),
    }


def _checkpoint(
    out: Path,
    run: _Run,
    history: _History,
    improved: bool,
    best_module: nn.Module,
    last_plot: float,
    multi_label: bool,
) -> float:
    """Write the epoch's weights, metrics, now and then the curves, and last `state.pt`,
    which commits the epoch (rank 0). Returns when the curves were last drawn."""
    if improved:
        save_weights(out / "best.safetensors", best_module.state_dict())
    save_weights(out / "last.safetensors", run.model.state_dict())
    if run.ema is not None:
        save_weights(out / "ema.safetensors", run.ema.module.state_dict())
    write_metrics(out, history.rows, run.ema is not None, multi_label)
    if time.perf_counter() - last_plot > 60:  # a plot costs ~0.5 s: not every epoch
        plots.curves(history.rows, out / "curves.png")
        last_plot = time.perf_counter()
    save_run_state(
        out / RUN_STATE,
        {
            "epoch": history.rows[-1]["epoch"],  # the epoch just done
            "model": run.model.state_dict(),
            "ema": run.ema.state_dict() if run.ema is not None else {},
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
            "best_score": history.best_score,
            "best_epoch": history.best_epoch,
            "stale_epochs": history.stale_epochs,
            "metrics": history.rows,
        },
    )
    return last_plot


# -- the end ------------------------------------------------------------------------------


def _test(
    best: nn.Module,
    splits: DataSplits,
    rank: int,
    world: int,
    run: _Run,
    config: TrainConfig,
    device: torch.device,
) -> tuple[float | None, float | None]:
    """(accuracy, mAP) of the best weights on the test shards of all processes."""
    shard = splits.test[rank::world]
    loader = eval_loader(shard, run.preprocess, config, device, splits.targets_size)
    _, accuracy, test_map = _evaluate(
        best, loader, device, run.memory_format, amp=False, multi_label=splits.multi_label
    )
    reporter(config, rank == 0)(
        f"test accuracy (best weights, {len(splits.test)} images): {accuracy:.4f}"
        + (f", mAP {test_map:.4f}" if test_map is not None else "")
    )
    return accuracy, test_map


def _result(
    out: Path,
    splits: DataSplits,
    history: _History,
    epochs_done: int,
    run: _Run,
    test: tuple[float | None, float | None],
    trust: dict[str, Any],
    started: float,
) -> TrainResult:
    """The TrainResult of a finished run: the best epoch's validation scores, the test's."""
    best_row = history.rows[history.best_epoch - 1] if splits.val and history.best_epoch else {}
    prefix = "ema_val" if run.ema is not None else "val"
    return TrainResult(
        run_dir=str(out),
        epochs=epochs_done,
        best_epoch=history.best_epoch,
        best_val_accuracy=best_row.get(f"{prefix}_acc"),
        test_accuracy=test[0],
        num_train=len(splits.train),
        num_val=len(splits.val),
        skipped=len(splits.skipped),
        seconds=round(time.perf_counter() - started, 3),
        multi_label=splits.multi_label,
        best_val_map=best_row.get(f"{prefix}_map"),
        test_map=test[1],
        **trust,
    )


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
    shard = [(p, t) for p, t in zip(probabilities, targets, strict=True)]
    if dist.is_initialized():
        shards: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(shards, shard)
        shard = [batch for part in shards for batch in part]
    return mean_average_precision(
        np.concatenate([t for _, t in shard]), np.concatenate([p for p, _ in shard])
    )
