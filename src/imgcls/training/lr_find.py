"""The learning-rate range test (`imgcls train DATA --find-lr`): a short run at
exponentially rising learning rates, from the model and data a training run would start
with, and a rate to train with read off its loss curve, as fastai does. Nothing it trains
is kept."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from imgcls.data.augment import train_transform
from imgcls.data.datasets import ImageFolder
from imgcls.reports import plots
from imgcls.training.config import TrainConfig
from imgcls.training.setup import (
    initial_model,
    make_augmentation,
    make_criterion,
    make_loader,
    make_optimizer,
    read_splits,
    set_train_mode,
)

__all__ = ["LRFinderResult", "find_lr"]


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
    splits = read_splits(config)
    if splits.multi_label:
        config.check_multi_label()
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, preprocess = initial_model(config, len(splits.class_names))
    model.to(device)
    set_train_mode(model, config.freeze_backbone)
    optimizer = make_optimizer(model, config)
    criterion = make_criterion(config, splits).to(device)
    augmentation = make_augmentation(config, splits, preprocess)
    transform = train_transform(preprocess, augmentation, config.seed)
    train_set = ImageFolder(splits.train, transform, splits.targets_size)
    loader = make_loader(
        train_set, config, device, config.batch_size, shuffle=True, drop_last=False
    )

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

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    plots.lr_find(lrs, losses, index, out / "lr_find.png")
    return LRFinderResult(lrs[index], str(out / "lr_find.png"), lrs, losses)


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


def _forever(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of `loader`, epoch after epoch."""
    while True:
        yield from loader
