"""ONNX export and the ONNX Runtime backend: same answers as PyTorch, cached, self-describing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from helpers import ESPRESSO_ID, cli_env, run_cli, run_python, write_photo_crops
from typer.testing import CliRunner

from imgcls import ImageClassifier
from imgcls.cli import app
from imgcls.errors import ConfigError
from imgcls.export import export_model
from imgcls.inference.runtime import OnnxRuntime, read_metadata


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_export_command_checks_parity_and_writes_metadata(tmp_path, samples):
    out = tmp_path / "lite0.onnx"
    result = run_cli(
        "export", "efficientnet_lite0", "--out", str(out), "--images", str(samples), "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["checked_on"] == 3 and report["top1_agreement"] == 1.0
    assert report["max_abs_diff"] < 1e-4
    model = onnx.load(out)
    onnx.checker.check_model(model)
    # TensorFlow-style "same" padding by constants, which ONNX Runtime fuses into the
    # convolutions, not recomputed from the input's shape on every run.
    assert "Shape" not in {node.op_type for node in model.graph.node}
    metadata = read_metadata(out)
    assert metadata.name == "efficientnet_lite0" and len(metadata.labels) == 1000
    assert metadata.preprocess.interpolation == "bicubic"
    runtime = OnnxRuntime(out)
    for batch in (1, 5):  # the batch axis is dynamic
        x = np.zeros((batch, 3, 224, 224), np.float32)
        assert runtime(x).shape == (batch, 1000) and runtime.features(x).shape == (batch, 1280)


def test_torchscript_export_matches_pytorch_and_carries_metadata(tmp_path, samples):
    import torch

    out = tmp_path / "lite0.pt"
    result = run_cli(
        "export", "efficientnet_lite0", "--format", "torchscript", "--out", str(out),
        "--images", str(samples), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == "torchscript" and report["top1_agreement"] == 1.0
    assert report["max_abs_diff"] < 1e-5
    extra = {"imgcls.json": ""}
    with pytest.warns(FutureWarning):  # TorchScript is deprecated in favour of torch.export
        scripted = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["imgcls.json"])["name"] == "efficientnet_lite0"
    assert scripted(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)


def test_int8_export_is_quantized_reports_agreement_and_classifies(tmp_path):
    calib = write_photo_crops(tmp_path / "calib", per_class=4, size=160)
    out = tmp_path / "lite0-int8.onnx"
    result = run_cli(
        "export", "efficientnet_lite0", "--out", str(out), "--int8", "--calib", str(calib),
        "--min-agreement", "0", "--json", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    int8 = json.loads(result.stdout)["int8"]
    assert int8["checked_on"] == 12 and 0.0 <= int8["top1_agreement"] <= 1.0
    assert int8["speedup"] == pytest.approx(int8["images_per_s"] / int8["fp32_images_per_s"])
    ops = {node.op_type for node in onnx.load(out).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    quantized = ImageClassifier(str(out))
    assert quantized.labels.names[:2] == ("tench", "goldfish")
    assert len(quantized.classify_image(calib / "espresso" / "0.jpg")) == 5


def test_int8_needs_calibration_images(tmp_path):
    result = run_cli("export", "efficientnet_lite0", "--out", str(tmp_path / "m.onnx"), "--int8")
    assert result.returncode == 2 and "--calib" in result.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_backend_gives_the_torch_answers(cache, samples):
    fast = ImageClassifier(backend="onnx")
    assert fast.runtime.backend == "onnx"
    eager = ImageClassifier(backend="torch")
    paths = sorted(samples.glob("*.jpg"))
    for ours, reference in zip(
        fast.classify_images(paths), eager.classify_images(paths), strict=True
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


def test_a_later_start_runs_from_the_cache_without_importing_torch(cache, samples):
    script = (
        "import sys; from imgcls import ImageClassifier; clf = ImageClassifier(); "
        f"top = clf.classify_image({str(samples / 'espresso.jpg')!r})[0]; "
        "print(top.class_id, clf.runtime.backend, 'torch' in sys.modules)"
    )

    def start() -> list[str]:
        result = run_python(script, env=cli_env(IMGCLS_CACHE_DIR=str(cache)))
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    assert start() == [ESPRESSO_ID, "onnx", "True"]  # the first start builds and exports
    assert start() == [ESPRESSO_ID, "onnx", "False"]
    assert ImageClassifier().module is not None  # PyTorch is still there on demand


def test_an_exported_file_is_a_model(cache, tmp_path, samples):
    ImageClassifier(backend="onnx")
    (exported,) = cache.glob("*.onnx")
    standalone = ImageClassifier(str(exported))
    assert standalone.classify_image(samples / "espresso.jpg")[0].class_id == ESPRESSO_ID


def test_auto_backend_is_onnx_on_the_cpu_and_torch_when_export_fails(cache, monkeypatch):
    assert ImageClassifier().runtime.backend == "onnx"

    def broken_export(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr("imgcls.inference.backends.cached_export", broken_export)
    with pytest.warns(RuntimeWarning, match="unsupported operator"):
        assert ImageClassifier("simple_cnn", pretrained=False).runtime.backend == "torch"
    with pytest.raises(RuntimeError, match="unsupported operator"):  # asked for by name
        ImageClassifier("simple_cnn", pretrained=False, backend="onnx")


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be one of auto, torch, onnx"):
        ImageClassifier(backend="tensorflow")


def test_export_model_is_the_export_command_from_python(tmp_path):
    report = export_model("simple_cnn", tmp_path / "nested" / "cnn.onnx")
    assert report["path"] == str(tmp_path / "nested" / "cnn.onnx") and report["format"] == "onnx"
    assert report["checked_on"] == 8 and report["top1_agreement"] == 1.0
    assert report["max_abs_diff"] < 1e-4 and "int8" not in report
    assert ImageClassifier(report["path"]).num_classes == report["num_classes"]


def test_export_model_names_its_parameters_and_the_cli_its_flags(tmp_path):
    with pytest.raises(ConfigError, match="needs `calibration`") as raised:
        export_model("simple_cnn", tmp_path / "m.onnx", int8=True)
    assert raised.value.parameters == ("int8", "calibration")
    result = CliRunner().invoke(app, ["export", "simple_cnn", "--out", str(tmp_path / "m.onnx"),
                                      "--int8"])  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --int8 quantizes an ONNX export and needs --calib")


def test_an_unwritable_out_is_one_line_and_exit_code_1(tmp_path):
    (tmp_path / "file").write_text("a file where a folder should be")
    out = tmp_path / "file" / "m.onnx"
    result = CliRunner().invoke(app, ["export", "simple_cnn", "--out", str(out), "--json"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # no traceback
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(out.parent) in lines[0]
    assert result.stdout == ""  # --json: no document for an export that did not happen
