"""What a training run says while it runs: lines on stderr (rank 0, progress on), the
epoch's progress bar and the one-line summary of each epoch."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console

from imgcls.progress import ProgressBar
from imgcls.training.config import TrainConfig

__all__ = ["console", "epoch_line", "epoch_progress", "reporter"]

console = Console(stderr=True, highlight=False, soft_wrap=True)


def reporter(config: TrainConfig, master: bool = True) -> Callable[..., None]:
    """Where progress lines go: the console on rank 0 of a run with progress on, else
    nowhere."""
    return console.print if master and config.progress else _quiet


def _quiet(*args: Any, **kwargs: Any) -> None:
    """Output of ranks other than 0, and of runs asked to be quiet."""


@contextlib.contextmanager
def epoch_progress(
    steps: int, epoch: int, config: TrainConfig, master: bool
) -> Iterator[Callable[[Any], None]]:
    """The bar of one epoch (stderr, rank 0, only on a terminal); what it yields takes the
    epoch's (loss sum, correct, images) so far after each step."""
    bar = ProgressBar(
        steps,
        f"epoch {epoch + 1}/{config.epochs}",
        enabled=master and config.progress,
        console=console,
        stats=True,
    )
    with bar as advance:
        started = time.perf_counter()

        def step_done(totals: Any) -> None:
            loss_sum, correct, count = totals.tolist()
            speed = count / (time.perf_counter() - started)
            advance(
                stats=f"loss {loss_sum / count:.4f} acc {correct / count:.3f} {speed:.0f} img/s"
            )

        yield step_done


def epoch_line(row: dict[str, Any], epochs: int, best: bool) -> str:
    """The line an epoch ends with: its losses, accuracies, learning rate and speed."""
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
