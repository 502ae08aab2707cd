"""Which runtime runs a model, and the export cache behind that choice.

"auto" runs the export on the CPU — ONNX Runtime (3x eager PyTorch there, docs/performance.md),
or OpenVINO in bf16 where the CPU has it (`imgcls.inference.precision`) — and PyTorch on an
accelerator or when a model does not export. The ONNX file is exported once
into the cache, $IMGCLS_CACHE_DIR or else $XDG_CACHE_HOME/imgcls/onnx, named by a digest
of its metadata and of every weight tensor, so a retrained run or other weights never meet
a stale export. An index maps each model's key (its weights fingerprint, read from files
alone) to its export, so a later start finds it without importing torch or building the
model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from imgcls.files import atomic_write, safe_filename
from imgcls.inference.onnx_export import EXPORT_REVISION, OPSET, export_onnx
from imgcls.inference.precision import with_precision
from imgcls.inference.runtime import OnnxMetadata, OnnxRuntime, OpenVinoRuntime, TorchRuntime
from imgcls.models.registry import weights_fingerprint

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "BACKENDS",
    "cache_dir",
    "cache_key",
    "cached_export",
    "cached_runtime",
    "choose_runtime",
    "export_runtime",
    "recall_export",
    "remember_export",
]

BACKENDS = ("auto", "torch", "onnx", "openvino")
_EXPORT_TAG = f"opset{OPSET}.r{EXPORT_REVISION}"  # what the file names and the index key on
_INDEX = "index.json"


def cache_dir() -> Path:
    """Where exports are cached: $IMGCLS_CACHE_DIR, else $XDG_CACHE_HOME/imgcls/onnx."""
    if os.environ.get("IMGCLS_CACHE_DIR"):
        return Path(os.environ["IMGCLS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imgcls" / "onnx"


def cache_key(
    model: str,
    *,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    img_size: int | None = None,
) -> str | None:
    """What finds a model's export in the index before the model is built: its weights
    fingerprint (`imgcls.models.registry.weights_fingerprint`) and, when not the model's own, its
    input size. None where nothing identifies the weights."""
    fingerprint = weights_fingerprint(model, pretrained=pretrained, weights=weights)
    if fingerprint is None or img_size is None:
        return fingerprint
    return f"{fingerprint}|{img_size}px"


def cached_runtime(
    key: str | None, *, device: str, backend: str, threads: int | None, precision: str = "auto"
) -> OnnxRuntime | OpenVinoRuntime | None:
    """The export recorded for `key` on its runtime (`export_runtime`), when the choice is an
    export and a former start left one; None otherwise (the model must then be built)."""
    if key is None or not _wants_onnx(device, backend):
        return None
    path = recall_export(key)
    return None if path is None else export_runtime(path, backend, precision, threads)


def export_runtime(
    path: str | os.PathLike | bytes, backend: str, precision: str, threads: int | None
) -> OnnxRuntime | OpenVinoRuntime:
    """An exported file on the CPU: ONNX Runtime, or OpenVINO at the precision
    `imgcls.inference.precision.with_precision` chooses."""
    runtime = OnnxRuntime(path, threads)
    return with_precision(
        runtime, backend=backend, precision=precision, threads=threads, cache=cache_dir()
    )


def choose_runtime(
    module: nn.Module,
    metadata: OnnxMetadata,
    *,
    device: str,
    backend: str,
    threads: int | None,
    key: str | None,
    precision: str = "auto",
) -> TorchRuntime | OnnxRuntime | OpenVinoRuntime:
    """The runtime for a built model: PyTorch, or its cached export (made now on first use,
    and recorded under `key` for later starts) on `export_runtime`. "auto" falls back to
    PyTorch, with a warning, when the export fails; "onnx" and "openvino" raise."""
    if not _wants_onnx(device, backend):
        return TorchRuntime(module, device=device)
    try:
        path = cached_export(module, metadata)
    except Exception as exc:  # any exporter failure: "auto" still has a working path
        if backend != "auto":
            raise
        warnings.warn(
            f"{metadata.name}: ONNX export failed ({type(exc).__name__}: {exc}); "
            "running on PyTorch instead",
            RuntimeWarning,
            stacklevel=4,  # the ImageClassifier(...) call
        )
        return TorchRuntime(module, device=device)
    if key is not None:
        remember_export(key, path)
    return export_runtime(path, backend, precision, threads)


def cached_export(module: nn.Module, metadata: OnnxMetadata) -> Path:
    """The ONNX export of `module` from the cache, exported there on first use."""
    digest = hashlib.sha256(_EXPORT_TAG.encode() + metadata.to_json().encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    path = cache_dir() / f"{safe_filename(metadata.name)[-60:]}-{digest.hexdigest()[:16]}.onnx"
    if not path.is_file():
        export_onnx(module, metadata, path)
    return path


def recall_export(key: str) -> Path | None:
    """The cached export recorded for a key (see `remember_export`)."""
    try:
        name = json.loads((cache_dir() / _INDEX).read_text()).get(_index_key(key))
    except (OSError, ValueError):
        return None
    path = cache_dir() / name if isinstance(name, str) else None
    return path if path is not None and path.is_file() else None


def remember_export(key: str, path: Path) -> None:
    """Record which export a key (`cache_key`) gave, so the next start finds it without
    importing torch or building the model."""

    index_path = cache_dir() / _INDEX
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    index[_index_key(key)] = path.name
    with contextlib.suppress(OSError):  # a read-only cache costs later starts their speed
        atomic_write(index_path, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=1)))


def _wants_onnx(device: str, backend: str) -> bool:
    return backend in ("onnx", "openvino") or (backend == "auto" and device == "cpu")


def _index_key(key: str) -> str:
    return f"{_EXPORT_TAG}|{key}"
