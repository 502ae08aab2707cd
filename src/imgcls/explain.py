"""Grad-CAM explanations: which part of an image made a CNN choose a class.

Built on the `grad-cam` package (pytorch-grad-cam, maintained, MIT), whose current releases
depend on `opencv-python-headless` like we do. What it leaves to us is choosing the layer:
`feature_map_layer` finds, for any registry model or run, the last module whose output is
still a spatial (N, C, H, W) feature map — timm's `forward_features` output, SimpleCNN's
`features` — and refuses models that end on tokens (ViT-like), where Grad-CAM has no map.
The map is computed on the model's center crop and laid back onto the decoded image.
PyTorch is imported where a map is computed, so that serving an ONNX model never loads it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from imgcls.data.images import DEFAULT_MAX_PIXELS, ImageSource, load_image
from imgcls.data.preprocess import crop_geometry, preprocess_image
from imgcls.errors import NotExplainable
from imgcls.inference.classifier import ImageClassifier, Prediction
from imgcls.inference.runtime import HeadRuntime, TorchRuntime
from imgcls.models.registry import DEFAULT_MODEL

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Explainer", "Explanation", "feature_map_layer", "overlay"]


@dataclass(frozen=True)
class Explanation:
    """The heat map of one image for one class."""

    image: np.ndarray  # the decoded RGB uint8 image, (H, W, 3)
    heatmap: np.ndarray  # float32 (H, W) in [0, 1], aligned with `image`; 0 outside the crop
    prediction: Prediction  # the explained class and its probability

    def overlay(self, alpha: float = 0.5) -> np.ndarray:
        """The image with the heat map on top (RGB uint8)."""
        return overlay(self.image, self.heatmap, alpha)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] heat map, coloured with OpenCV's JET map, over an RGB uint8 image."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(
        image.astype(np.float32) / 255.0, heatmap, use_rgb=True, image_weight=1.0 - alpha
    )


def feature_map_layer(module: nn.Module, input_size: tuple[int, int, int]) -> nn.Module:
    """The last module (in forward order) whose output is a spatial feature map.

    Found by running one dummy input with forward hooks on every module: hooks fire when a
    module finishes, so a stage (timm's `bn2`, ResNet's `layer4`) comes after its
    children. A model whose later modules output 3-D token tensors is a transformer.
    """
    import torch

    finished: list[tuple[nn.Module, tuple[int, ...]]] = []

    def record(layer: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            finished.append((layer, tuple(output.shape)))

    handles = [m.register_forward_hook(record) for m in module.modules() if m is not module]
    try:
        with torch.inference_mode():
            module.eval()(torch.zeros(1, *input_size, device=_device(module)))
    finally:
        for handle in handles:
            handle.remove()
    spatial = [i for i, (_, shape) in enumerate(finished) if len(shape) == 4 and shape[2] > 1]
    name = type(module).__name__
    if not spatial:
        raise NotExplainable(f"{name} has no convolutional feature map; Grad-CAM needs a CNN")
    last = spatial[-1]
    if any(len(shape) == 3 for _, shape in finished[last + 1 :]):
        raise NotExplainable(
            f"{name} ends on tokens (a ViT-like model), not on a convolutional feature map; "
            "Grad-CAM here explains CNNs only"
        )
    return finished[last][0]


class Explainer:
    """Grad-CAM for one model: a registry name or a trained run directory (softmax head).

    Keeps its own PyTorch copy of the model, because Grad-CAM hooks the model and needs
    gradients, which a shared inference model (or an ONNX one) cannot give. Not safe to
    call from two threads at once; the service serialises calls.
    """

    def __init__(
        self,
        model: str | os.PathLike = DEFAULT_MODEL,
        *,
        weights: str | os.PathLike | None = None,
        device: str = "cpu",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.classifier = ImageClassifier(
            str(model), weights=weights, device=device, max_pixels=max_pixels, backend="torch"
        )
        runtime = self.classifier.runtime
        if isinstance(runtime, HeadRuntime):
            raise NotExplainable(
                f"{model}: its classifier is a scikit-learn head, which has no gradients; "
                "Grad-CAM explains softmax models"
            )
        if not isinstance(runtime, TorchRuntime):
            raise NotExplainable(
                f"{model}: an ONNX file has no gradients; explain the model name or run "
                "directory it was exported from"
            )
        self.module = self.classifier.runtime.module
        self.layer = feature_map_layer(self.module, self.classifier.preprocess.input_size)

    @property
    def name(self) -> str:
        return self.classifier.name

    def class_index(self, label: str) -> int:
        """The output index of a class given by label, class id or index."""
        labels = self.classifier.labels
        index = labels.index_of(label)
        if index is not None:
            return index
        if label.isascii() and label.isdigit() and int(label) < len(labels):
            return int(label)
        raise NotExplainable(
            f"class {label!r} is not one of the {len(labels)} classes of {self.name} "
            "(give a label, a class id or an index)"
        )

    def explain(
        self, image: ImageSource, label: str | None = None, max_side: int | None = None
    ) -> Explanation:
        """The heat map for class `label` (default: the top-1 class) on `image`, at the
        image's own size or, with `max_side`, shrunk to at most that many pixels a side."""
        import torch
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        config = self.classifier.preprocess
        chosen = None if label is None else self.class_index(label)
        decoded = load_image(image, max_pixels=self.classifier.max_pixels)
        if max_side is not None and max(decoded.shape[:2]) > max_side:
            scale = max_side / max(decoded.shape[:2])
            size = (round(decoded.shape[1] * scale), round(decoded.shape[0] * scale))
            decoded = cv2.resize(decoded, size, interpolation=cv2.INTER_AREA)
        batch = preprocess_image(decoded, config)[None]
        probabilities = self.classifier.predict_proba(batch)[0]
        index = int(np.argmax(probabilities)) if chosen is None else chosen
        with GradCAM(model=self.module, target_layers=[self.layer]) as cam:
            crop_map = cam(
                input_tensor=torch.from_numpy(batch).to(_device(self.module)),
                targets=[ClassifierOutputTarget(index)],
            )[0]
        labels = self.classifier.labels
        present = bool(self.classifier.present(probabilities[None])[0, index])
        prediction = Prediction(
            labels.names[index],
            labels.class_ids[index],
            index,
            float(probabilities[index]),
            present=present,
        )
        return Explanation(decoded, _uncrop(crop_map, decoded.shape[:2], config), prediction)


def _uncrop(crop_map: np.ndarray, image_size: tuple[int, int], config) -> np.ndarray:
    """A map over the model's center crop, placed back onto the whole image (0 outside)."""
    resized_h, resized_w, top, left = crop_geometry(image_size, config)
    crop_h, crop_w = config.size
    canvas = np.zeros((resized_h, resized_w), np.float32)
    canvas[top : top + crop_h, left : left + crop_w] = crop_map
    height, width = image_size
    return np.clip(cv2.resize(canvas, (width, height), interpolation=cv2.INTER_LINEAR), 0, 1)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
