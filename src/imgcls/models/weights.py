"""Weight files, read without unpickling anything and written as safetensors.

Nothing a user hands in is unpickled: `.pth`/`.bin`/`.pt` files go through
`torch.load(weights_only=True)`, which refuses any object that is not tensors and
containers of them.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError  # light: safetensors imports no torch

from imgcls.errors import WeightsError
from imgcls.files import atomic_write

if TYPE_CHECKING:  # torch is imported where tensors are read or written, not at start-up
    import torch

__all__ = [
    "load_state_dict_file",
    "save_weights",
]


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


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor]) -> None:
    """A state dict as safetensors (tensors made contiguous, shared storage split)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp))
