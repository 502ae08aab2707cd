"""ONNX export and the ONNX Runtime backend: same answers as PyTorch, cached, self-describing."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import onnx
import pytest
from conftest import ESPRESSO_ID, cli_env, imgcls_command

from imgcls import ImageClassifier
from imgcls.export import read_metadata
from imgcls.runtime import OnnxRuntime


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_export_command_checks_parity_and_writes_metadata(tmp_path, samples):
    out = tmp_path / "lite0.onnx"
    result = subprocess.run(
        imgcls_command(
            "export", "efficientnet_lite0", "--out", str(out), "--images", str(samples), "--json"
        ),  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["checked_on"] == 3 and report["top1_agreement"] == 1.0
    assert report["max_abs_diff"] < 1e-4
    onnx.checker.check_model(onnx.load(out))
    metadata = read_metadata(out)
    assert metadata.name == "efficientnet_lite0" and len(metadata.labels) == 1000
    assert metadata.preprocess.interpolation == "bicubic"
    runtime = OnnxRuntime(out)
    for batch in (1, 5):  # the batch axis is dynamic
        x = np.zeros((batch, 3, 224, 224), np.float32)
        assert runtime(x).shape == (batch, 1000) and runtime.features(x).shape == (batch, 1280)


def test_onnx_backend_gives_the_torch_answers(cache, classifier, samples):
    fast = ImageClassifier(backend="onnx")
    assert fast.runtime.backend == "onnx"
    paths = sorted(samples.glob("*.jpg"))
    for ours, reference in zip(
        fast.classify_images(paths), classifier.classify_images(paths), strict=True
    ):
        assert [p.index for p in ours] == [p.index for p in reference]
        assert np.allclose([p.score for p in ours], [p.score for p in reference], atol=1e-4)


def test_export_is_cached_and_keyed_by_weights(cache, tmp_path):
    ImageClassifier(backend="onnx")
    (first,) = cache.glob("*.onnx")
    stamp = first.stat().st_mtime_ns
    ImageClassifier(backend="onnx")
    assert [p.name for p in cache.glob("*.onnx")] == [first.name]
    assert first.stat().st_mtime_ns == stamp  # reused, not written again
    ImageClassifier("resnet18", pretrained=False, backend="onnx")
    assert len(list(cache.glob("*.onnx"))) == 2


def test_an_exported_file_is_a_model(cache, tmp_path, samples):
    ImageClassifier(backend="onnx")
    (exported,) = cache.glob("*.onnx")
    standalone = ImageClassifier(str(exported))
    assert standalone.classify_image(samples / "espresso.jpg")[0].class_id == ESPRESSO_ID


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be one of torch, onnx"):
        ImageClassifier(backend="tensorflow")
