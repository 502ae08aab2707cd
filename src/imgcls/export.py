"""ONNX export: a model and its preprocessing and labels in one file, checked against
PyTorch. (`imgcls.inference.backends` keeps exports so that the fast ONNX Runtime path costs
nothing after the first run.)

The graph has one input, `input` (N, 3, H, W) float32 with a dynamic batch axis, and two
outputs: `logits` (N, classes) and `features` (N, D), the pooled penultimate features that
classical heads read. The metadata key `imgcls` holds JSON
(`imgcls.inference.runtime.OnnxMetadata`): name, class ids and names, preprocessing.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.benchmark import time_calls
from imgcls.data.images import list_images
from imgcls.errors import ConfigError, DataError, QuantizationError
from imgcls.files import atomic_write, make_dir
from imgcls.inference.classifier import ImageClassifier
from imgcls.inference.onnx_export import export_head_onnx, export_onnx
from imgcls.inference.runtime import OnnxMetadata
from imgcls.trust.calibration import sigmoid, softmax

__all__ = [
    "EXPORT_FORMATS",
    "export_model",
    "export_torchscript",
    "parity",
    "quantize_int8",
]


def export_torchscript(module, metadata: OnnxMetadata, path: str | os.PathLike) -> Path:
    """Write `module` traced to TorchScript (logits out), metadata as the extra file
    `imgcls.json`; for C++ (libtorch) and mobile users who do not run ONNX."""
    import torch

    example = torch.zeros((1, *metadata.preprocess.input_size))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript: deprecated, supported
        traced = torch.jit.trace(module.eval(), example)
    extra = {"imgcls.json": metadata.to_json()}
    atomic_write(path, lambda tmp: torch.jit.save(traced, tmp, _extra_files=extra))
    return Path(path)


def quantize_int8(
    fp32_path: str | os.PathLike, path: str | os.PathLike, calibration: np.ndarray
) -> Path:
    """Static int8 quantization of an exported file with ONNX Runtime: QDQ, per-channel
    int8 weights, uint8 activations with ranges calibrated on `calibration` (N, 3, H, W),
    real preprocessed images. The metadata is carried over."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 8)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": np.ascontiguousarray(batch)}

    fp32 = onnx.load(str(fp32_path))
    # The first convolution, which reads the image, and the classifier layer stay float, as
    # is usual: a sliver of the time and much of the error. Measured with the default model
    # on 300 held-out photos: 96% top-1 agreement with all convolutions int8, 97% without
    # the first.
    nodes = fp32.graph.node
    first_conv = [node.name for node in nodes if node.op_type == "Conv"][:1]
    keep_float = first_conv + [node.name for node in nodes if node.op_type in ("Gemm", "MatMul")]
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))  # shapes, constant folding, BN fusion

        def write(tmp: str) -> None:
            quantize_static(
                str(prepared),
                tmp,
                Batches(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                # Full 8-bit weights. AVX2 without VNNI sums u8 x s8 pairs in int16, which
                # can saturate (ONNX Runtime's docs suggest 7-bit weights then), but here
                # 7-bit weights lost more: 91% agreement against 96% on the photos above.
                reduce_range=False,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=keep_float,
            )
            quantized = onnx.load(tmp)
            del quantized.metadata_props[:]
            quantized.metadata_props.extend(fp32.metadata_props)
            onnx.save(quantized, tmp)

        atomic_write(path, write)
    return Path(path)


def parity(
    torch_logits: np.ndarray, onnx_logits: np.ndarray, multi_label: bool = False
) -> dict[str, float]:
    """Max absolute difference of probabilities (softmax, or a multi-label model's
    sigmoids) and top-1 agreement, ONNX vs PyTorch."""

    probabilities = sigmoid if multi_label else softmax
    p_torch, p_onnx = probabilities(torch_logits), probabilities(onnx_logits)
    return {
        "max_abs_diff": float(np.abs(p_torch - p_onnx).max()),
        "top1_agreement": float((p_torch.argmax(1) == p_onnx.argmax(1)).mean()),
    }


EXPORT_FORMATS = ("onnx", "torchscript")  # what `export_model` writes


def export_model(
    model: str,
    out: str | os.PathLike,
    format: str = "onnx",
    *,
    weights: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    int8: bool = False,
    calibration: str | os.PathLike | None = None,
    min_agreement: float = 0.97,
) -> dict[str, Any]:
    """Export `model` (a name or run directory; `weights` a weights file for it) to `out`
    and check the file against PyTorch, as `imgcls export` does.

    `format`: "onnx" (dynamic batch axis, labels and preprocessing in the metadata) or
    "torchscript". The check runs both on the decodable images under `images`, or on fixed
    random inputs. `int8` then quantizes the ONNX file with ranges calibrated on the images
    under `calibration`, and refuses (QuantizationError, `out` removed) a model whose top-1
    agrees with fp32 on fewer than `min_agreement` of them.

    Returns the report: `path`, `format`, `num_classes`, `input_size`, `checked_on`,
    `max_abs_diff` (of probabilities), `top1_agreement`, and with `int8` an `int8` entry
    (its `top1_agreement` with fp32, `checked_on`, `images_per_s`, `fp32_images_per_s`,
    `speedup`).
    """
    from imgcls.inference.runtime import OnnxRuntime, TorchRuntime

    if format not in EXPORT_FORMATS:
        raise ConfigError(
            f"`format` must be {' or '.join(EXPORT_FORMATS)}, got {format!r}",
            parameters=("format",),
        )
    if int8 and (format != "onnx" or calibration is None):
        raise ConfigError(
            "`int8` quantizes an ONNX export and needs `calibration`, a folder of real images",
            parameters=("int8", "calibration"),
        )
    for directory in (images, calibration if int8 else None):  # before the model loads
        if directory is not None and not list_images(directory):
            raise DataError(f"{directory}: no image files in this directory")
    classifier = ImageClassifier(model, weights=weights, backend="torch")
    module = classifier.module
    head = None if isinstance(classifier.runtime, TorchRuntime) else classifier.runtime.head
    if head is not None and format != "onnx":
        raise ConfigError(
            f"`format`: {model} is a classical-head run, which exports to ONNX only",
            parameters=("format",),
        )
    metadata = classifier.export_metadata(module) if head is None else classifier.run_metadata()
    if images is not None:
        batch = _preprocessed(images, classifier)[:64]
    else:  # inputs spread like normalised images, fixed for a repeatable check
        rng = np.random.default_rng(0)
        batch = rng.uniform(-2, 2, (8, *classifier.preprocess.input_size)).astype(np.float32)
    out = Path(out)
    make_dir(out.parent)
    if format == "torchscript":
        export_torchscript(module, metadata, out)
        exported = _torchscript_runtime(out)
    elif head is not None:
        export_head_onnx(module, head.path, metadata, out)
        exported = OnnxRuntime(out)
    else:
        export_onnx(module, metadata, out)
        exported = OnnxRuntime(out)
    report: dict[str, Any] = {
        "path": str(out),
        "format": format,
        "num_classes": classifier.num_classes,
        "input_size": list(classifier.preprocess.input_size),
        "checked_on": len(batch),
        **parity(classifier.runtime(batch), exported(batch), metadata.multi_label),
    }
    if int8:
        calibration_batch = _preprocessed(calibration, classifier)
        report["int8"] = _quantize_checked(out, calibration_batch, exported, min_agreement)
    return report


def _preprocessed(directory: str | os.PathLike, classifier) -> np.ndarray:
    """The decodable images under `directory` as one preprocessed (N, 3, H, W) array."""
    inputs = [x for _, x in classifier.prepared_paths(list_images(directory))]
    inputs = [x for x in inputs if not isinstance(x, Exception)]
    if not inputs:
        raise DataError(f"{directory}: none of its images could be decoded")
    return np.stack(inputs)


def _quantize_checked(
    out: Path,
    calibration: np.ndarray,
    fp32: Callable[[np.ndarray], np.ndarray],
    min_agreement: float,
) -> dict[str, Any]:
    """Quantize `out` in place to int8; its agreement with fp32 and speed-up on the
    calibration images. Below `min_agreement`, `out` is removed and QuantizationError says so."""
    import tempfile

    from imgcls.inference.runtime import OnnxRuntime

    with tempfile.TemporaryDirectory() as scratch:
        candidate = quantize_int8(out, Path(scratch) / "int8.onnx", calibration)
        int8 = OnnxRuntime(candidate)
        agreement = parity(fp32(calibration), int8(calibration))["top1_agreement"]
        batch = np.ascontiguousarray(calibration[:1].repeat(8, axis=0))
        speed = {}
        for name, runtime in (("fp32", fp32), ("int8", int8)):
            latencies = time_calls(runtime, batch, seconds=2.0)
            speed[name] = len(batch) * len(latencies) / latencies.sum()
        if agreement < min_agreement:
            out.unlink()
            raise QuantizationError(
                f"int8 top-1 agreement with fp32 is {agreement:.1%} on {len(calibration)} "
                f"images, below `min_agreement` {min_agreement:.0%}; {out} not written (more "
                "or more typical `calibration` images may help)",
                parameters=("min_agreement", "calibration"),
            )
        Path(candidate).replace(out)
    return {
        "top1_agreement": agreement,
        "checked_on": len(calibration),
        "images_per_s": speed["int8"],
        "fp32_images_per_s": speed["fp32"],
        "speedup": speed["int8"] / speed["fp32"],
    }


def _torchscript_runtime(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Our own freshly written TorchScript file, run for the parity check."""
    import torch

    with warnings.catch_warnings():  # deprecated in favour of torch.export, still supported
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(path), map_location="cpu").eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return scripted(torch.from_numpy(batch)).numpy()

    return run
