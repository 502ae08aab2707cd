"""The runtime: logits and the pooled features the classifier head sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import run_cli

from imgcls.inference.runtime import TorchRuntime
from imgcls.models.registry import build_model, classifier_head


@pytest.mark.parametrize(
    ("name", "width"), [("efficientnet_lite0", 1280), ("alexnet", 4096), ("simple_cnn", 256)]
)
def test_features_are_what_the_last_layer_reads(name, width):
    module, preprocess = build_model(name, pretrained=False, num_classes=3)
    runtime = TorchRuntime(module)
    batch = np.random.default_rng(0).standard_normal((2, *preprocess.input_size), np.float32)
    features = runtime.features(batch)
    assert features.shape == (2, width)
    last = classifier_head(module)
    with torch.inference_mode():
        logits = last(torch.from_numpy(features)).numpy()
    assert np.allclose(logits, runtime(batch), atol=1e-4)


def test_features_command_writes_paths_labels_and_vectors(tmp_path, samples):
    for folder, name in (("cats", "cat.jpg"), ("cups", "espresso.jpg")):
        (tmp_path / "data" / folder).mkdir(parents=True)
        (tmp_path / "data" / folder / name).write_bytes((samples / name).read_bytes())
    # In no class folder: no label (not the data folder's own name).
    (tmp_path / "data" / "rocket.jpg").write_bytes((samples / "rocket.jpg").read_bytes())
    out = tmp_path / "feats.npz"
    result = run_cli("features", str(tmp_path / "data"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    saved = np.load(out)
    assert list(saved["paths"]) == ["cats/cat.jpg", "cups/espresso.jpg", "rocket.jpg"]
    assert list(saved["labels"]) == ["cats", "cups", ""]
    assert saved["features"].shape == (3, 1280) and np.isfinite(saved["features"]).all()
    assert not np.allclose(saved["features"][0], saved["features"][1])


def test_onnx_metadata_carries_the_conformal_entry_and_the_taxonomy():
    from imgcls.data.preprocess import Preprocess
    from imgcls.inference.runtime import OnnxMetadata
    from imgcls.models.labels import Labels
    from imgcls.trust.conformal import Conformal, fit_conformal

    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(3), 200)
    conformal = fit_conformal(probabilities, rng.integers(0, 3, 200), "aps").to_config()
    taxonomy = {"parents": {"a": "x", "b": "x", "c": "y"}, "answer_confidence": 0.8}
    metadata = OnnxMetadata("run", Labels.from_names(["a", "b", "c"]),
                            Preprocess.from_config({"input_size": [3, 32, 32]}),
                            conformal=conformal, taxonomy=taxonomy)  # fmt: skip
    loaded = OnnxMetadata.from_json(metadata.to_json())
    assert loaded.taxonomy == taxonomy and loaded.conformal == conformal
    assert Conformal.from_config(loaded.conformal).threshold(0.9) == pytest.approx(
        Conformal.from_config(conformal).threshold(0.9)
    )
