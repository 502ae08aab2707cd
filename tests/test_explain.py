"""Grad-CAM (`imgcls.explain`, `imgcls explain`): the heat map lies on the object."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import timm
from helpers import SAMPLES
from typer.testing import CliRunner

from imgcls.cli import app
from imgcls.errors import NotExplainable
from imgcls.explain import Explainer, feature_map_layer
from imgcls.models.simple_cnn import SimpleCNN

CANVAS = (480, 640)  # height, width
CUP = (slice(10, 390), slice(70, 490))  # the cup and saucer in samples/espresso.jpg
# (top, left) of the pasted cup, 240 x 217 px; both regions lie inside the model's center
# crop of this canvas (rows 30-450, columns 99-541), the part of the image the model sees.
SIZE = (217, 240)  # height, width
PLACES = {"lower-right": (225, 295), "upper-left": (40, 110)}


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer()  # efficientnet_lite0, the bundled ImageNet weights


def _espresso_on_canvas(top: int, left: int) -> np.ndarray:
    """A plain grey canvas with the espresso cup pasted at (top, left)."""
    photo = cv2.cvtColor(cv2.imread(str(SAMPLES / "espresso.jpg")), cv2.COLOR_BGR2RGB)
    canvas = np.full((*CANVAS, 3), 190, np.uint8)
    height, width = SIZE
    cup = cv2.resize(photo[CUP], (width, height), interpolation=cv2.INTER_AREA)
    canvas[top : top + height, left : left + width] = cup
    return canvas


def _peak(heatmap: np.ndarray) -> tuple[int, int]:
    """The centre of the hottest area (within 2% of the maximum): Grad-CAM's map is a few
    cells upsampled, so its maximum is a plateau, not a pixel."""
    y, x = np.argwhere(heatmap >= 0.98 * heatmap.max()).mean(axis=0)
    return int(y), int(x)


def _inside(point: tuple[int, int], region: tuple[int, int, int, int]) -> bool:
    (y, x), (top, left, height, width) = point, region
    return top <= y < top + height and left <= x < left + width


@pytest.mark.parametrize("place", PLACES.values(), ids=PLACES.keys())
def test_heat_map_peaks_on_the_pasted_photo(explainer, place) -> None:
    region = (*place, *SIZE)
    explanation = explainer.explain(_espresso_on_canvas(*place), "espresso")
    assert explanation.prediction.index == 967
    assert explanation.heatmap.shape == CANVAS
    assert _inside(_peak(explanation.heatmap), region)
    top, left, height, width = region
    inside = np.zeros(CANVAS, bool)
    inside[top : top + height, left : left + width] = True
    assert explanation.heatmap[inside].mean() > 3 * explanation.heatmap[~inside].mean()


def test_a_chosen_class_and_an_overlay_of_the_image_size(explainer) -> None:
    explanation = explainer.explain(SAMPLES / "espresso.jpg", "n03063599")  # by class id
    assert explanation.prediction.label == "coffee mug" and explanation.prediction.score < 0.5
    overlay = explanation.overlay()
    assert overlay.shape == explanation.image.shape and overlay.dtype == np.uint8
    assert np.abs(overlay.astype(int) - explanation.image).mean() > 10


def test_an_unknown_class_is_refused_by_name(explainer) -> None:
    with pytest.raises(NotExplainable, match="'teapot shelf' is not one of the 1000 classes"):
        explainer.explain(SAMPLES / "espresso.jpg", "teapot shelf")


@pytest.mark.parametrize(
    ("model", "input_size", "expected"),
    [
        (timm.create_model("resnet18", pretrained=False), (3, 64, 64), "layer4"),
        (SimpleCNN(num_classes=3), (3, 32, 32), "features"),
    ],
    ids=["resnet18", "simple_cnn"],
)
def test_the_last_convolutional_stage_is_found(model, input_size, expected) -> None:
    layer = feature_map_layer(model, input_size)
    assert layer is dict(model.named_modules())[expected]


def test_a_vision_transformer_is_refused_with_a_reason() -> None:
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64)
    with pytest.raises(NotExplainable, match="ViT-like"):
        feature_map_layer(vit, (3, 64, 64))


def test_cli_writes_the_overlay(tmp_path) -> None:
    out = tmp_path / "heat.png"
    args = ["explain", str(SAMPLES / "cat.jpg"), "--model", "simple_cnn", "--class", "3"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--json"])  # a tiny CNN
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["index"] == 3
    written = cv2.imread(str(out))
    assert written.shape[:2] == cv2.imread(str(SAMPLES / "cat.jpg")).shape[:2]


def test_cli_names_a_missing_image_before_loading_a_model(tmp_path) -> None:
    out = tmp_path / "heat.png"
    result = CliRunner().invoke(app, ["explain", str(tmp_path / "nope.jpg"), "--out", str(out)])
    assert result.exit_code == 1
    assert "nope.jpg: no such file" in result.output and not out.exists()


def test_an_onnx_file_is_refused_with_what_to_explain_instead(tmp_path) -> None:
    onnx_file = tmp_path / "simple.onnx"
    exported = CliRunner().invoke(app, ["export", "simple_cnn", "--out", str(onnx_file)])
    assert exported.exit_code == 0, exported.output
    with pytest.raises(NotExplainable, match="ONNX file has no gradients; explain the model name"):
        Explainer(onnx_file)
