"""Which numeric precision a CPU model runs at, and the parity gate that keeps bf16 honest.

`auto` runs an export on OpenVINO in bf16 where OpenVINO is installed and the CPU has bf16
arithmetic (AVX-512 BF16 or AMX), and on ONNX Runtime in fp32 elsewhere. bf16 is kept only
when it answers as fp32 does: on the gate images its top-1 must agree with ONNX Runtime
fp32's on all but `MAX_AGREEMENT_LOSS` of them, else the model runs in fp32 with one
warning. An explicit `precision="bf16"` is run as asked, without the gate.

A registry model has no validation split to check on, so the gate images are 48 crops and
mirror images of three photos shipped in the package (`parity/`: a cat, an espresso, a
rocket): real photos, but few, so one flipped answer fails the gate; it catches a model
that bf16 breaks, and near-ties too. The verdict is cached per model file and OpenVINO
version beside the export cache, so the check runs once per machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np

from imgcls.data.images import load_image
from imgcls.data.preprocess import Preprocess, preprocess_image
from imgcls.errors import ModelError
from imgcls.files import atomic_write
from imgcls.inference.runtime import (
    OnnxRuntime,
    OpenVinoRuntime,
    cpu_has_bf16,
    import_openvino,
)

__all__ = ["MAX_AGREEMENT_LOSS", "PRECISIONS", "gate_images", "top1_agreement", "with_precision"]

PRECISIONS = ("auto", "fp32", "bf16", "int8")
MAX_AGREEMENT_LOSS = 0.005  # top-1 agreement with fp32 that bf16 may lose on the gate images
_GATE_PHOTOS = Path(__file__).parent / "parity"
_VERDICTS = "precision.json"
_BF16_NEEDS = (
    "bf16 runs on OpenVINO (pip install 'imgcls[openvino]', --backend auto or openvino) on a "
    "CPU with AVX-512 BF16 or AMX; here one of these is missing"
)


def with_precision(
    runtime: OnnxRuntime,
    *,
    backend: str,
    precision: str,
    threads: int | None,
    cache: Path | None,
    max_loss: float = MAX_AGREEMENT_LOSS,
    gate: np.ndarray | None = None,
) -> OnnxRuntime | OpenVinoRuntime:
    """The runtime an export runs on for `backend` ("auto", "onnx", "openvino") and
    `precision`: `runtime` itself (ONNX Runtime) or OpenVINO on the same file. `gate`:
    preprocessed images to check bf16 on in place of `gate_images` (a run's validation
    images, say); its verdict is not cached."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    quantized = runtime.precision == "int8"
    if precision == "int8" and not quantized:
        raise ModelError(
            f"{runtime.path}: precision int8 needs an int8 file; write one with "
            "`imgcls export --int8 --calib DIR` (it checks agreement with fp32) and load that"
        )
    if precision == "fp32" and quantized:
        raise ModelError(f"{runtime.path}: an int8 export runs in int8; load the fp32 export")
    bf16 = cpu_has_bf16()  # False too where OpenVINO is not installed
    if backend == "openvino":
        _check_openvino_installed()
    elif backend == "onnx" or precision == "fp32" or quantized or not bf16:
        if precision == "bf16":
            raise ModelError(_BF16_NEEDS)
        return runtime
    if precision == "bf16" and not bf16:
        raise ModelError(_BF16_NEEDS)
    chosen = "int8" if quantized else ("fp32" if precision == "fp32" or not bf16 else "bf16")
    if chosen != "bf16" or precision == "bf16":
        return OpenVinoRuntime(runtime.model_bytes(), runtime.metadata, threads, chosen)
    key, verdicts = _verdicts(runtime, None if gate is not None else cache)
    agreement = verdicts.get(key)
    candidate = None
    if not isinstance(agreement, float):  # not checked yet: compile, compare, remember
        try:
            candidate = OpenVinoRuntime(runtime.model_bytes(), runtime.metadata, threads, "bf16")
        except RuntimeError:  # ops OpenVINO cannot convert (a scikit-learn head's ai.onnx.ml)
            if backend == "openvino":
                raise
            return runtime
        inputs = gate if gate is not None else gate_images(runtime.metadata.preprocess)
        agreement = top1_agreement(runtime, candidate, inputs)
        if gate is None and cache is not None:
            _remember(cache / _VERDICTS, {**verdicts, key: agreement})
    if 1.0 - agreement > max_loss:
        warnings.warn(
            f"{runtime.metadata.name}: bf16 agrees with fp32 on {agreement:.1%} of the gate "
            f"images (at most {max_loss:.1%} may differ); running in fp32 on ONNX Runtime",
            RuntimeWarning,
            stacklevel=2,
        )
        return runtime
    return candidate or OpenVinoRuntime(runtime.model_bytes(), runtime.metadata, threads, "bf16")


def gate_images(config: Preprocess) -> np.ndarray:
    """The (48, 3, H, W) model input the bf16 gate compares on: each shipped photo whole
    and as 7 crops (60-90% of its shorter side, at the corners and center), each also
    mirrored."""
    inputs = []
    for path in sorted(_GATE_PHOTOS.glob("*.jpg")):
        photo = load_image(path)
        height, width = photo.shape[:2]
        crops = [photo]
        for fraction, (fy, fx) in zip(
            (0.9, 0.8, 0.7, 0.6, 0.9, 0.8, 0.7),
            ((0.5, 0.5), (0, 0), (0, 1), (1, 0), (1, 1), (0.5, 0), (0.5, 1)),
            strict=True,
        ):
            side = int(min(height, width) * fraction)
            y, x = int((height - side) * fy), int((width - side) * fx)
            crops.append(photo[y : y + side, x : x + side])
        for crop in crops:
            inputs.append(preprocess_image(np.ascontiguousarray(crop), config))
            inputs.append(preprocess_image(np.ascontiguousarray(crop[:, ::-1]), config))
    return np.stack(inputs)


def top1_agreement(reference, candidate, inputs: np.ndarray, batch: int = 8) -> float:
    """The fraction of `inputs` whose top-1 class is the same from both runtimes."""
    same = 0
    for start in range(0, len(inputs), batch):
        chunk = inputs[start : start + batch]
        same += int((reference(chunk).argmax(1) == candidate(chunk).argmax(1)).sum())
    return same / len(inputs)


def _verdicts(runtime: OnnxRuntime, cache: Path | None) -> tuple[str, dict]:
    """The gate's key for this model file and OpenVINO version, and the cached verdicts
    (none without a cache)."""
    version = import_openvino().__version__
    key = f"{hashlib.sha256(runtime.model_bytes()).hexdigest()[:20]}|openvino {version}"
    if cache is None:
        return key, {}
    try:
        verdicts = json.loads((cache / _VERDICTS).read_text())
    except (OSError, ValueError):
        return key, {}
    return key, verdicts if isinstance(verdicts, dict) else {}


def _remember(path: Path, verdicts: dict) -> None:
    with contextlib.suppress(OSError):  # a read-only cache: the check runs next time too
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(verdicts, indent=1)))


def _check_openvino_installed() -> None:
    try:
        import_openvino()
    except ImportError:
        raise ModelError(
            "backend openvino needs OpenVINO: pip install 'imgcls[openvino]'"
        ) from None
