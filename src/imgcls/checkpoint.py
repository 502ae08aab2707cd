"""Weight files and run directories, read safely and written atomically.

Nothing a user hands in is unpickled: `.pth`/`.bin`/`.pt` files go through
`torch.load(weights_only=True)`, which refuses any object that is not tensors and
containers of them.

A run directory (what `imgcls train` writes) holds:

    config.json         architecture, class names, preprocessing, training arguments
    best.safetensors    weights of the best validation epoch (what the run predicts with)
    last.safetensors    weights after the last finished epoch
    ema.safetensors     EMA weights after the last epoch (with --ema)
    state.pt            resume state: model, optimizer, scheduler, RNG, epoch (tensors and
                        primitives only, read back with weights_only=True)
    metrics.csv         one row per epoch;  curves.png  loss and accuracy plots
    skipped.txt         files that did not decode (when there were any)

`new_run_config` builds config.json; `write_metrics` and `write_skipped` write the last two.

Every file is replaced atomically (written to a temporary file, flushed to disk, then
`os.replace`), and state.pt is written last, so a kill at any moment leaves a consistent
last checkpoint. A write that fails (disk full, no permission) raises `WriteError` and
leaves the previous version of the file as it was.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError  # light: safetensors imports no torch

from imgcls.errors import WeightsError, WriteError
from imgcls.multilabel import DEFAULT_THRESHOLD

if TYPE_CHECKING:  # torch is imported where tensors are read or written, not at start-up
    import torch

    from imgcls.data import DataSplits
    from imgcls.transforms import Augmentation, Preprocess

__all__ = [
    "METRICS_COLUMNS",
    "RUN_CONFIG",
    "RUN_STATE",
    "WeightsError",
    "WriteError",
    "atomic_write",
    "is_run_dir",
    "load_run_state",
    "load_state_dict_file",
    "make_dir",
    "new_run_config",
    "read_run_config",
    "save_run_state",
    "save_weights",
    "write_json",
    "write_metrics",
    "write_skipped",
    "write_text",
]

RUN_CONFIG = "config.json"
RUN_STATE = "state.pt"
METRICS_COLUMNS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s",
)  # fmt: skip
EMA_COLUMNS = ("ema_val_loss", "ema_val_acc")  # metrics.csv of a run with --ema
MAP_COLUMNS = ("val_map", "ema_val_map")  # of a multi-label run (the second with --ema)

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors by parameter name from a safetensors file or a plain state dict file.

    Common wrappers ({"state_dict": ...}, {"model": ...}) and DDP's "module." prefix are
    removed, so checkpoints from timm, torchvision and our own runs all load.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path}: not a valid safetensors file ({exc})") from None
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path}: refused, the file holds Python objects other than tensors and imgcls "
            f"never unpickles them; save a state dict or safetensors instead "
            f"({str(exc).splitlines()[0]})"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise WeightsError(f"{path}: not a PyTorch weights file ({exc})") from None
    return _unwrap(loaded, path)


def _unwrap(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    import torch

    if isinstance(loaded, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise WeightsError(f"{path}: expected a state dict (parameter name -> tensor)")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


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


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(temporary_path)`, flush it to disk, then move it over `path` in one step.

    Raises WriteError (disk full, permission denied, ...) with `path` untouched."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    os.close(fd)
    try:
        write(tmp)
        # Without the flush a full disk can surface only after the rename (delayed
        # allocation), leaving a truncated file where the good checkpoint was.
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError | SafetensorError):  # safetensors' writer: its own type
            raise _write_error(path, exc) from None
        raise


def make_dir(path: str | os.PathLike) -> Path:
    """`path` as a folder, made with its parents when missing; WriteError when it cannot be
    (a file in the way, no permission)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise WriteError(f"{path}: cannot make this folder ({reason})") from None
    return path


def _write_error(path: Path, exc: BaseException) -> WriteError:
    reason = getattr(exc, "strerror", None) or str(exc)
    return WriteError(
        f"{path}: cannot write ({reason}); the previous {path.name}, if any, is left intact"
    )


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor]) -> None:
    """A state dict as safetensors (tensors made contiguous, shared storage split)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


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
    from imgcls import __version__

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
