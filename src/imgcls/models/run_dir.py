"""Reading a run directory: is this folder a run, and its config.json.

A run directory (what `imgcls train` writes, see `imgcls.training.run_writer`) holds:

    config.json         architecture, class names, preprocessing, training arguments
    best.safetensors    weights of the best validation epoch (what the run predicts with)
    last.safetensors    weights after the last finished epoch
    ema.safetensors     EMA weights after the last epoch (with --ema)
    state.pt            resume state: model, optimizer, scheduler, RNG, epoch (tensors and
                        primitives only, read back with weights_only=True)
    metrics.csv         one row per epoch;  curves.png  loss and accuracy plots
    skipped.txt         files that did not decode (when there were any)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgcls.errors import WeightsError

if TYPE_CHECKING:  # torch is imported where tensors are read or written, not at start-up
    pass

__all__ = [
    "RUN_CONFIG",
    "is_run_dir",
    "read_run_config",
]

RUN_CONFIG = "config.json"


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a run directory written by `imgcls train`."""
    return (Path(path) / RUN_CONFIG).is_file()


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The `config.json` of a run directory."""
    path = Path(run_dir) / RUN_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable run config ({exc})") from None
    missing = {"architecture", "class_names", "preprocess", "weights"} - set(config)
    if missing:
        raise WeightsError(f"{path}: not an imgcls run config (missing {sorted(missing)})")
    return config
