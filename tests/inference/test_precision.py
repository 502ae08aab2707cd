"""OpenVINO's bf16 and its parity gate against ONNX Runtime fp32."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imgcls.data.images import load_image
from imgcls.data.preprocess import preprocess_image
from imgcls.errors import ModelError
from imgcls.inference.classifier import ImageClassifier
from imgcls.inference.precision import gate_images, top1_agreement, with_precision
from imgcls.inference.runtime import (
    OnnxRuntime,
    OpenVinoRuntime,
    cpu_has_bf16,
    import_openvino,
)

try:
    import_openvino()  # not pytest.importorskip: a plain import starts OpenVINO's telemetry
except ImportError:
    pytest.skip("needs OpenVINO (imgcls[openvino])", allow_module_level=True)
needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 arithmetic")


@pytest.fixture(scope="module")
def fp32() -> OnnxRuntime:
    """ONNX Runtime fp32 on the default model's export (the reference)."""
    return ImageClassifier(backend="onnx").runtime


@pytest.fixture(scope="module")
def boundary(fp32, samples) -> np.ndarray:
    """Inputs on the model's decision boundary: blends of the cat and the espresso photo
    around the blend where fp32's top-1 changes, so that any numeric drift flips some."""
    config = fp32.metadata.preprocess
    cat, espresso = (
        preprocess_image(load_image(samples / f"{name}.jpg"), config)
        for name in ("cat", "espresso")
    )
    low, high = 0.0, 1.0
    top = fp32(np.stack([cat]))[0].argmax()
    for _ in range(30):  # bisection on the blend weight
        middle = (low + high) / 2
        blend = (1 - middle) * cat + middle * espresso
        low, high = (middle, high) if fp32(blend[None])[0].argmax() == top else (low, middle)
    weights = low + np.linspace(-0.05, 0.05, 64)
    return np.stack([(1 - w) * cat + w * espresso for w in weights]).astype(np.float32)


@needs_bf16
def test_bf16_falls_back_to_fp32_with_one_warning_when_parity_fails(fp32, boundary):
    bf16 = OpenVinoRuntime(fp32.model_bytes(), fp32.metadata, precision="bf16")
    agreement = top1_agreement(fp32, bf16, boundary)
    assert agreement < 0.995  # the injected set does disagree
    with pytest.warns(RuntimeWarning, match=r"bf16 agrees with fp32 on .*running in fp32") as seen:
        chosen = with_precision(
            fp32, backend="auto", precision="auto", threads=None, cache=None, gate=boundary
        )
    assert chosen is fp32 and chosen.precision == "fp32"
    assert len(seen) == 1 and "\n" not in str(seen[0].message)


@needs_bf16
def test_bf16_is_kept_where_the_gate_allows_its_loss(fp32, boundary):
    chosen = with_precision(
        fp32, backend="auto", precision="auto", threads=None, cache=None, gate=boundary,
        max_loss=1.0,
    )  # fmt: skip
    assert chosen.backend == "openvino" and chosen.precision == "bf16"


@needs_bf16
def test_the_gate_verdict_is_cached_and_a_later_start_reads_it(fp32, tmp_path):
    kwargs = dict(backend="openvino", precision="auto", threads=None, cache=tmp_path)
    assert with_precision(fp32, **kwargs, max_loss=1.0).precision == "bf16"
    path = tmp_path / "precision.json"
    verdicts = json.loads(path.read_text())
    assert len(verdicts) == 1 and 0.0 <= next(iter(verdicts.values())) <= 1.0
    path.write_text(json.dumps(dict.fromkeys(verdicts, 0.5)))  # as if half had disagreed
    with pytest.warns(RuntimeWarning, match="on 50.0% of the gate images"):
        assert with_precision(fp32, **kwargs).precision == "fp32"


def test_openvino_fp32_answers_as_onnx_runtime(fp32, samples):
    runtime = OpenVinoRuntime(fp32.model_bytes(), fp32.metadata, precision="fp32")
    batch = gate_images(fp32.metadata.preprocess)[:8]
    np.testing.assert_allclose(runtime(batch), fp32(batch), atol=1e-3)
    assert runtime.features(batch).shape == fp32.features(batch).shape


def test_precision_is_reported_and_refused_where_it_cannot_run(fp32, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(fp32.model_bytes())
    classifier = ImageClassifier(str(path), backend="openvino", precision="fp32")
    assert classifier.precision == "fp32" and "precision='fp32'" in repr(classifier)
    assert ImageClassifier(str(path), backend="onnx").precision == "fp32"
    with pytest.raises(ModelError, match="int8 needs an int8 file"):
        ImageClassifier(str(path), precision="int8")
    with pytest.raises(ModelError, match="bf16 runs on OpenVINO"):
        ImageClassifier(str(path), backend="onnx", precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        ImageClassifier(str(path), precision="fp16")
