"""Writing a run directory: config.json, metrics.csv, skipped.txt and the resume state.

Every file is replaced atomically (`imgcls.files.atomic_write`), and state.pt is written
last, so a kill at any moment leaves a consistent last checkpoint. A write that fails (disk
full, no permission) raises `WriteError` and leaves the previous version as it was.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgcls.errors import WeightsError
from imgcls.files import atomic_write, write_text
from imgcls.trust.multilabel import DEFAULT_THRESHOLD
from imgcls.version import __version__

if TYPE_CHECKING:  # torch is imported where tensors are read or written, not at start-up
    from imgcls.data.augment import Augmentation
    from imgcls.data.datasets import DataSplits
    from imgcls.data.preprocess import Preprocess

__all__ = [
    "EMA_COLUMNS",
    "MAP_COLUMNS",
    "METRICS_COLUMNS",
    "RUN_STATE",
    "load_run_state",
    "new_run_config",
    "save_run_state",
    "write_metrics",
    "write_skipped",
]


RUN_STATE = "state.pt"


METRICS_COLUMNS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s",
)  # fmt: skip


EMA_COLUMNS = ("ema_val_loss", "ema_val_acc")  # metrics.csv of a run with --ema


MAP_COLUMNS = ("val_map", "ema_val_map")  # of a multi-label run (the second with --ema)


def save_run_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Resume state; it must hold only tensors, numbers, strings and containers of them."""
    import torch

    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_run_state(path: str | os.PathLike) -> dict[str, Any]:
    """Resume state written by `save_run_state`, read without unpickling objects."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        raise WeightsError(f"{path}: not a usable resume state ({exc})") from None


def new_run_config(
    architecture: str,
    splits: DataSplits,
    preprocess: Preprocess,
    train: dict[str, Any],
    augmentation: Augmentation | None = None,
) -> dict[str, Any]:
    """config.json: what it takes to rebuild the model and feed it, and how it was trained
    (`train`: the fields of the run's TrainConfig)."""

    return {
        "format": "imgcls-run",
        "imgcls_version": __version__,
        "architecture": architecture,
        "num_classes": len(splits.class_names),
        "class_names": splits.class_names,
        # A multi-label run: sigmoid outputs, per-class thresholds (chosen on validation
        # after training; 0.5 until then).
        **(
            {"multi_label": True, "thresholds": [DEFAULT_THRESHOLD] * len(splits.class_names)}
            if splits.multi_label
            else {}
        ),
        # Hierarchical answers (imgcls.trust.hierarchy): the parents of the classes.
        **(
            {
                "taxonomy": {
                    "parents": splits.parents,
                    "answer_confidence": train["answer_confidence"],
                }
            }
            if splits.parents
            else {}
        ),
        "preprocess": preprocess.to_dict(),
        "img_size": preprocess.size[0],
        "weights": "best.safetensors",
        "ema": train["ema"],
        "data": {
            "train": len(splits.train),
            "val": len(splits.val),
            "test": len(splits.test),
            "skipped": len(splits.skipped),
        },
        "train": train,
        **({"augmentation": augmentation.to_dict()} if augmentation else {}),
    }


def write_metrics(
    run_dir: str | os.PathLike, rows: list[dict[str, Any]], ema: bool, multi_label: bool = False
) -> None:
    """metrics.csv: one row per epoch (a missing value is an empty cell)."""
    columns = METRICS_COLUMNS + (EMA_COLUMNS if ema else ())
    if multi_label:
        columns += MAP_COLUMNS[: 2 if ema else 1]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    write_text(Path(run_dir) / "metrics.csv", buffer.getvalue())


def _csv_value(value: Any) -> Any:
    return "" if value is None else round(value, 6) if isinstance(value, float) else value


def write_skipped(run_dir: str | os.PathLike, skipped: list[tuple[Path, str]]) -> None:
    """skipped.txt: the files that did not decode and why, when there were any."""
    if skipped:
        write_text(Path(run_dir) / "skipped.txt", "".join(f"{p}\t{why}\n" for p, why in skipped))
