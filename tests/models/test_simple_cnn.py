"""The textbook CNN: exports to ONNX at every input size, with the numbers it always had."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from imgcls.export import parity
from imgcls.inference.onnx_export import export_onnx
from imgcls.inference.runtime import OnnxMetadata, OnnxRuntime
from imgcls.models.labels import Labels
from imgcls.models.registry import build_model


@pytest.mark.parametrize("size", [8, 13, 28, 32, 48, 64, 100, 224])
def test_exports_at_every_size_with_the_outputs_of_adaptive_avg_pool(size, tmp_path):
    """At 28 and 48 px the pooled maps (3x3, 6x6) are not multiples of the 4x4 output,
    which the TorchScript exporter refuses for PyTorch's own adaptive pooling; 8 px, the
    least `train` accepts, pools a 1x1 map."""
    torch.manual_seed(size)
    model, preprocess = build_model("simple_cnn", num_classes=3, img_size=size)
    for module in model.modules():  # running statistics other than 0 and 1, as once trained
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    before = copy.deepcopy(model)  # the network as it was: PyTorch's module as the pool
    before.features[-1] = nn.AdaptiveAvgPool2d(4)
    assert before.state_dict().keys() == model.state_dict().keys()  # run directories load
    batch = np.random.default_rng(size).uniform(-2, 2, (5, 3, size, size)).astype(np.float32)

    metadata = OnnxMetadata("simple_cnn", Labels.from_names(["a", "b", "c"]), preprocess)
    exported = OnnxRuntime(export_onnx(model, metadata, tmp_path / "model.onnx"))

    with torch.no_grad():
        logits = model(torch.from_numpy(batch)).numpy()
        assert np.array_equal(logits, before(torch.from_numpy(batch)).numpy())
    onnx_logits = exported(batch)
    np.testing.assert_allclose(onnx_logits, logits, rtol=1e-4, atol=1e-5)
    report = parity(logits, onnx_logits)
    assert report["max_abs_diff"] < 1e-5 and report["top1_agreement"] == 1.0
    assert exported(batch[:1]).shape == (1, 3)  # the batch axis stays dynamic
