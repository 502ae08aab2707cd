"""Running a model: a batch of preprocessed images in, logits out, with PyTorch, ONNX
Runtime or OpenVINO; and what an exported ONNX file says about itself (`OnnxMetadata`),
which is all ONNX Runtime needs to classify without PyTorch."""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgcls.data.preprocess import Preprocess
from imgcls.errors import ModelError
from imgcls.inference.heads import OnnxHead, head_logits
from imgcls.models.labels import Labels

if TYPE_CHECKING:  # imported by TorchRuntime: ONNX Runtime alone never loads torch
    from torch import nn

__all__ = [
    "METADATA_KEY",
    "HeadRuntime",
    "OnnxMetadata",
    "OnnxRuntime",
    "OpenVinoRuntime",
    "TorchRuntime",
    "cpu_has_bf16",
    "import_openvino",
    "read_metadata",
]

METADATA_KEY = "imgcls"  # the ONNX metadata entry that holds `OnnxMetadata.to_json()`


@dataclass(frozen=True)
class OnnxMetadata:
    """What an exported file says about itself: enough to classify without PyTorch."""

    name: str
    labels: Labels
    preprocess: Preprocess
    temperature: float = 1.0  # a run's calibration: probabilities = softmax(logits / T)
    threshold: float | None = None  # a run's "unknown" threshold on the top-1 probability
    # A multi-label run: probabilities = sigmoid(logits), class i present when its
    # probability reaches thresholds[i].
    thresholds: tuple[float, ...] | None = None
    # A run's conformal calibration: the score, thresholds at standard coverage levels and
    # the calibration scores (imgcls.trust.conformal; docs/trust.md says how a client
    # computes sets from them), and its taxonomy (parents, answer confidence).
    conformal: dict[str, Any] | None = None
    taxonomy: dict[str, Any] | None = None

    @property
    def multi_label(self) -> bool:
        return self.thresholds is not None

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "name": self.name,
            "class_ids": list(self.labels.class_ids),
            "class_names": list(self.labels.names),
            "preprocess": self.preprocess.to_dict(),
        }
        if self.temperature != 1.0 or self.threshold is not None:
            data.update(temperature=self.temperature, threshold=self.threshold)
        if self.thresholds is not None:
            data.update(multi_label=True, thresholds=list(self.thresholds))
        if self.conformal is not None:
            data["conformal"] = self.conformal
        if self.taxonomy is not None:
            data["taxonomy"] = self.taxonomy
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> OnnxMetadata:
        data: dict[str, Any] = json.loads(text)
        thresholds = data.get("thresholds") if data.get("multi_label") else None
        return cls(
            data["name"],
            Labels(tuple(data["class_ids"]), tuple(data["class_names"])),
            Preprocess.from_config(data["preprocess"]),
            float(data.get("temperature", 1.0)),
            data.get("threshold"),
            None if thresholds is None else tuple(float(t) for t in thresholds),
            data.get("conformal"),
            data.get("taxonomy"),
        )


def read_metadata(path: str | os.PathLike) -> OnnxMetadata:
    """The imgcls metadata of an exported file (ValueError when it has none)."""
    return OnnxRuntime(path, threads=1).metadata


class TorchRuntime:
    """Eager PyTorch inference on a device ("cpu", "cuda", "cuda:1", ...)."""

    backend = "torch"
    precision = "fp32"

    def __init__(self, module: nn.Module, device: str = "cpu") -> None:
        import torch

        self.device = torch.device(device)
        self.module = module.eval().to(self.device)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 → (N, num_classes) float32 logits."""
        import torch

        with torch.inference_mode():
            logits = self.module(torch.from_numpy(batch).to(self.device))
        return logits.float().cpu().numpy()

    def features(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 → (N, D) pooled penultimate features, the classifier's input."""
        import torch

        from imgcls.models.registry import pooled_features  # with torch

        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            features = pooled_features(self.module, x)
        return features.float().cpu().numpy()

    def logits_and_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both outputs from one forward pass (the k-NN "unknown" score reads features)."""
        import torch

        from imgcls.models.registry import classifier_head, pooled_features  # with torch

        with torch.inference_mode():
            features = pooled_features(self.module, torch.from_numpy(batch).to(self.device))
            logits = classifier_head(self.module)(features)
        return logits.float().cpu().numpy(), features.float().cpu().numpy()


class OnnxRuntime:
    """ONNX Runtime for a file written by `imgcls.export.export_onnx`, given by its path or
    its bytes: on the CPU, or with `device` "cuda" ("cuda:1", ...) on CUDA's execution
    provider (onnxruntime-gpu), the CPU taking what CUDA does not run."""

    backend = "onnx"

    def __init__(
        self, path: str | os.PathLike | bytes, threads: int | None = None, device: str = "cpu"
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # The cores this process may use (a container or taskset may allow fewer than
        # the machine has); one inter-op thread, as these graphs are one chain of ops.
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Denormal floats make CPU kernels many times slower; flush them to zero.
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        # Idle threads sleep instead of spinning: beside decoding threads (serve, predict
        # DIR) spinning takes the cores they need. Measured on 2 cores: model-only speed
        # unchanged (110 images/s at batch 8), served at 16 connections 73 -> 81 requests/s.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._model = path
        self.path = "<bytes>" if isinstance(path, bytes) else path
        self.device = device
        self.session = ort.InferenceSession(
            path if isinstance(path, bytes) else str(path), options, providers=_providers(device)
        )
        # An `imgcls export --int8` file holds QuantizeLinear nodes; op names are plain
        # strings in the ONNX protobuf, so the bytes tell without parsing the graph.
        self.precision = "int8" if b"QuantizeLinear" in self.model_bytes() else "fp32"

    def model_bytes(self) -> bytes:
        """The ONNX file's content (what `imgcls.inference.classifier.ModelBundle` carries)."""
        return self._model if isinstance(self._model, bytes) else Path(self._model).read_bytes()

    @property
    def metadata(self) -> OnnxMetadata:
        """The file's labels and preprocessing (ValueError when imgcls did not write it)."""
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise ValueError(f"{self.path}: not exported by imgcls (no '{METADATA_KEY}' metadata)")
        return OnnxMetadata.from_json(raw)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 → (N, num_classes) float32 logits."""
        return self.session.run(["logits"], {"input": np.ascontiguousarray(batch)})[0]

    def features(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 → (N, D) pooled penultimate features."""
        return self.session.run(["features"], {"input": np.ascontiguousarray(batch)})[0]

    def logits_and_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self.session.run(
            ["logits", "features"], {"input": np.ascontiguousarray(batch)}
        )
        return logits, features


def import_openvino():
    """The openvino module, imported without its usage telemetry: `import openvino` starts
    openvino-telemetry, which posts to Google Analytics from a thread unless a consent file
    declines, and imgcls makes no network call. Where openvino-telemetry does not import,
    OpenVINO uses its own no-op stand-in. ImportError when OpenVINO is not installed."""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # None: `import` raises ImportError
    import openvino

    return openvino


def cpu_has_bf16() -> bool:
    """Whether OpenVINO is installed and finds bf16 arithmetic (AVX-512 BF16 or AMX) on
    this CPU."""
    try:
        ov = import_openvino()
    except ImportError:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoRuntime:
    """OpenVINO on the CPU for an exported file, at `precision` "bf16" (where the CPU has
    it: 1.4-1.8x ONNX Runtime fp32 here, docs/performance.md) or "fp32"; an int8 export
    runs in int8 either way. `metadata` is the file's own (read by ONNX Runtime)."""

    backend = "openvino"

    def __init__(
        self,
        path: str | os.PathLike | bytes,
        metadata: OnnxMetadata,
        threads: int | None = None,
        precision: str = "bf16",
    ) -> None:
        core = import_openvino().Core()
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": threads or len(os.sched_getaffinity(0)),
            "PERFORMANCE_HINT": "LATENCY",  # one batch at a time, on every thread
        }
        model = core.read_model(path if isinstance(path, bytes) else str(path))
        self._compiled = core.compile_model(model, "CPU", config)
        self._outputs = {o.get_any_name(): o for o in self._compiled.outputs}
        self._requests = threading.local()  # an infer request serves one thread at a time
        self._model = path
        self.path = "<bytes>" if isinstance(path, bytes) else path
        self.metadata = metadata
        self.precision = precision

    def model_bytes(self) -> bytes:
        return self._model if isinstance(self._model, bytes) else Path(self._model).read_bytes()

    def _run(self, batch: np.ndarray, names: tuple[str, ...]) -> list[np.ndarray]:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self._compiled.create_infer_request()
        results = request.infer({0: np.ascontiguousarray(batch)})
        return [np.array(results[self._outputs[name]], np.float32) for name in names]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 → (N, num_classes) float32 logits."""
        return self._run(batch, ("logits",))[0]

    def features(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, ("features",))[0]

    def logits_and_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self._run(batch, ("logits", "features"))
        return logits, features


def _providers(device: str) -> list:
    """ONNX Runtime's execution providers for a device: "cpu", or "cuda[:N]"."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    kind, _, index = device.partition(":")
    if kind != "cuda" or not (index.isdigit() or not index):
        raise ModelError(f"device must be cpu, cuda or cuda:N for ONNX Runtime, got {device!r}")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ModelError(
            f"device {device!r}: this onnxruntime has no CUDA execution provider "
            "(pip install onnxruntime-gpu in place of onnxruntime)"
        )
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]


class HeadRuntime:
    """A backbone's features through a classical head (logreg, SVM, MLP, k-NN).

    Its "logits" are log-probabilities, so the softmax every caller applies gives the
    head's probabilities back unchanged; for a multi-label (one-vs-rest) head they are
    log-odds, which the sigmoid turns back into its per-class probabilities.
    """

    def __init__(
        self,
        backbone: TorchRuntime | OnnxRuntime | OpenVinoRuntime,
        head: OnnxHead,
        multi_label: bool = False,
    ) -> None:
        self.backbone = backbone
        self.head = head
        self.multi_label = multi_label
        self.backend = backbone.backend
        self.precision = backbone.precision

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.logits_and_features(batch)[0]

    def features(self, batch: np.ndarray) -> np.ndarray:
        return self.backbone.features(batch)

    def logits_and_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features = self.backbone.features(batch)
        probabilities = self.head.predict_proba(features)
        return head_logits(probabilities, self.multi_label), features
