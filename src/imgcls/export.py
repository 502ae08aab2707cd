"""ONNX export: a model and its preprocessing and labels in one file, checked against
PyTorch, and a cache of exports so the fast ONNX Runtime path costs nothing after the first
run.

The graph has one input, `input` (N, 3, H, W) float32 with a dynamic batch axis, and two
outputs: `logits` (N, classes) and `features` (N, D), the pooled penultimate features that
classical heads read. The metadata key `imgcls` holds JSON: name, class ids and names,
preprocessing.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.labels import Labels
from imgcls.transforms import Preprocess

__all__ = ["OnnxMetadata", "cache_dir", "cached_export", "export_onnx", "parity", "read_metadata"]

METADATA_KEY = "imgcls"
OPSET = 17


@dataclass(frozen=True)
class OnnxMetadata:
    """What an exported file says about itself: enough to classify without PyTorch."""

    name: str
    labels: Labels
    preprocess: Preprocess
    temperature: float = 1.0  # a run's calibration: probabilities = softmax(logits / T)
    threshold: float | None = None  # a run's "unknown" threshold on the top-1 probability

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "name": self.name,
            "class_ids": list(self.labels.class_ids),
            "class_names": list(self.labels.names),
            "preprocess": self.preprocess.to_dict(),
        }
        if self.temperature != 1.0 or self.threshold is not None:
            data.update(temperature=self.temperature, threshold=self.threshold)
        return json.dumps(data, ensure_ascii=False)


def export_onnx(module, metadata: OnnxMetadata, path: str | os.PathLike) -> Path:
    """Write `module` as ONNX to `path` (atomically) with `metadata`; returns the path."""
    import onnx
    import torch

    from imgcls.checkpoint import atomic_write
    from imgcls.models import classifier_head, pooled_features

    class LogitsAndFeatures(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = module

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features = pooled_features(self.model, x)
            return classifier_head(self.model)(features), features

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros((1, *metadata.preprocess.input_size))

    def write(tmp: str) -> None:
        # The TorchScript-based exporter: about 1 s for these CNNs, where the dynamo
        # exporter takes over 10 s, and the cache pays it on a user's first run. It is
        # deprecated, not gone, in the torch releases pyproject.toml admits.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # its own and its internals'
            torch.onnx.export(
                LogitsAndFeatures().eval(),
                (example,),
                tmp,
                dynamo=False,
                opset_version=OPSET,
                input_names=["input"],
                output_names=["logits", "features"],
                dynamic_axes={name: {0: "batch"} for name in ("input", "logits", "features")},
            )
        model = onnx.load(tmp)
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, metadata.to_json()
        onnx.checker.check_model(model)
        onnx.save(model, tmp)

    atomic_write(path, write)
    return path


def read_metadata(path: str | os.PathLike) -> OnnxMetadata:
    """The imgcls metadata of an exported file (ValueError when it has none)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{path}: not exported by imgcls (no '{METADATA_KEY}' metadata)")
    data: dict[str, Any] = json.loads(raw)
    return OnnxMetadata(
        data["name"],
        Labels(tuple(data["class_ids"]), tuple(data["class_names"])),
        Preprocess.from_config(data["preprocess"]),
        float(data.get("temperature", 1.0)),
        data.get("threshold"),
    )


def cache_dir() -> Path:
    """Where exports are cached: $IMGCLS_CACHE_DIR, else $XDG_CACHE_HOME/imgcls/onnx."""
    if os.environ.get("IMGCLS_CACHE_DIR"):
        return Path(os.environ["IMGCLS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imgcls" / "onnx"


def cached_export(module, metadata: OnnxMetadata) -> Path:
    """The ONNX export of `module` from the cache, exported there on first use.

    The key is a digest of the metadata and of every weight tensor, so a retrained run or
    other weights never meet a stale export.
    """
    digest = hashlib.sha256(metadata.to_json().encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    path = cache_dir() / f"{_safe(metadata.name)}-{digest.hexdigest()[:16]}.onnx"
    if not path.is_file():
        export_onnx(module, metadata, path)
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.strip("/"))[-60:]


def parity(torch_logits: np.ndarray, onnx_logits: np.ndarray) -> dict[str, float]:
    """Max absolute difference of probabilities and top-1 agreement, ONNX vs PyTorch."""
    from imgcls.calibration import softmax

    p_torch, p_onnx = softmax(torch_logits), softmax(onnx_logits)
    return {
        "max_abs_diff": float(np.abs(p_torch - p_onnx).max()),
        "top1_agreement": float((p_torch.argmax(1) == p_onnx.argmax(1)).mean()),
    }
