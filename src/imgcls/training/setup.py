"""What a training run is built from: processes and device (DDP), the data splits and
loaders, the model, its augmentation, optimizer, schedule, EMA, loss and MixUp/CutMix.
`loop.train` and `lr_find.find_lr` start from the same pieces."""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, get_worker_info

from imgcls.data.augment import Augmentation, choose_augmentation, survey_images
from imgcls.data.datasets import DataSplits, ImageFolder, find_splits
from imgcls.data.preprocess import Preprocess, preprocess_image
from imgcls.errors import ConfigError
from imgcls.models.registry import (
    build_model,
    canonical_name,
    classifier_head,
    load_initial_weights,
)
from imgcls.training.config import TrainConfig
from imgcls.trust.hierarchy import read_taxonomy_file

__all__ = [
    "check_same_run",
    "eval_loader",
    "init_distributed",
    "initial_model",
    "make_augmentation",
    "make_criterion",
    "make_ema",
    "make_loader",
    "make_mix",
    "make_optimizer",
    "make_scheduler",
    "read_splits",
    "set_train_mode",
]


def init_distributed(device: str | None) -> tuple[int, int, torch.device]:
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


def read_splits(config: TrainConfig) -> DataSplits:
    """The samples of `config.data`, a data folder or a label file; with a `taxonomy`
    file, its parents of the classes (with "folders", the parent folders')."""
    splits = find_splits(
        config.data,
        config.val_split,
        config.seed,
        multi_label=config.multi_label,
        label_delim=config.label_delim,
        skip_missing=config.skip_missing,
        nested=config.taxonomy == "folders",
    )
    if config.taxonomy not in (None, "folders"):
        splits.parents = read_taxonomy_file(config.taxonomy, splits.class_names)
    if splits.parents and splits.multi_label:
        raise ConfigError(
            "`taxonomy`: hierarchical answers sum one image's class probabilities, which a "
            "multi-label run does not have; leave the taxonomy off",
            parameters=("taxonomy",),
        )
    return splits


def check_same_run(saved: dict[str, Any], config: TrainConfig, splits: DataSplits) -> None:
    """A resumed run must go on with the architecture and classes it started with."""
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


def set_train_mode(model: nn.Module, freeze_backbone: bool) -> None:
    """Training mode; with a frozen backbone only the head trains, so the backbone's batch
    norm statistics stay as they were too."""
    if freeze_backbone:
        model.eval()
        classifier_head(model).train()
    else:
        model.train()


def make_augmentation(
    config: TrainConfig, splits: DataSplits, preprocess: Preprocess
) -> Augmentation:
    """The preset fitted to the training images: see `augment.choose_augmentation`."""
    samples = splits.train
    if splits.multi_label:  # the survey compares whole label sets: one number for each
        numbers: dict[Any, int] = {}
        samples = [(path, numbers.setdefault(label, len(numbers))) for path, label in samples]
    survey = survey_images(samples, config.seed) if config.augment != "none" else None
    return choose_augmentation(config.augment, min(preprocess.size), config.hflip, survey)


# -- optimizer, schedule, EMA -------------------------------------------------------------


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters; timm's factory leaves norms and biases
    out of weight decay."""
    from timm.optim import create_optimizer_v2  # timm loads when a run starts, as in models

    return create_optimizer_v2(
        model,
        opt="sgd" if config.optimizer == "sgd" else "adamw",
        lr=config.peak_lr,
        weight_decay=config.weight_decay,
        momentum=0.9,
    )


def make_ema(model: nn.Module, decay: float) -> nn.Module:
    """timm's exponential moving average of the weights, warmed up over the first steps."""
    from timm.utils import ModelEmaV3  # timm loads when a run starts, as in models

    return ModelEmaV3(model, decay=decay, use_warmup=True)


def make_scheduler(
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


# -- loss and batch mixing ----------------------------------------------------------------


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


def make_mix(mixup: float, cutmix: float, num_classes: int) -> nn.Module | None:
    """MixUp and/or CutMix on a batch (torchvision's): (images, labels) → (mixed, soft)."""
    from torchvision.transforms import v2  # torchvision loads only for a run that mixes

    choices = []
    if mixup > 0:
        choices.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        choices.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    if not choices:
        return None
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)


# -- loaders ------------------------------------------------------------------------------


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


def eval_loader(
    samples,
    preprocess: Preprocess,
    config: TrainConfig,
    device: torch.device,
    targets_size: int | None = None,
) -> DataLoader:
    """An evaluation loader: eval preprocessing (resize, center crop), in order."""
    transform = functools.partial(preprocess_image, config=preprocess)
    dataset = ImageFolder(samples, transform, targets_size)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
    )
