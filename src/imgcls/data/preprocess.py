"""Preprocessing: the evaluation transform every model input goes through.

The settings come from the model's pretrained config (timm's `resolve_data_config`), so a
model and the way to feed it travel together. The eval transform is timm's — resize the
shorter side to size / crop_pct, center crop, normalize — done with OpenCV and numpy on the
decoded uint8 image. Training puts its augmentation in front of the same normalisation
(`imgcls.data.augment`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import cv2
import numpy as np

__all__ = [
    "Preprocess",
    "crop_geometry",
    "preprocess_image",
]


_CV2_INTERPOLATION = {
    "bicubic": cv2.INTER_CUBIC,
    "bilinear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST,
}


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its input; the fields of timm's pretrained data config."""

    input_size: tuple[int, int, int] = (3, 224, 224)  # (C, H, W)
    interpolation: str = "bicubic"  # bicubic | bilinear | nearest
    crop_pct: float = 0.875  # crop size / resize size
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Preprocess:
        """From timm's `resolve_data_config` output or our saved `to_dict` form."""
        interpolation = str(config.get("interpolation", cls.interpolation))
        return cls(
            input_size=tuple(int(v) for v in config.get("input_size", cls.input_size)),
            interpolation=interpolation if interpolation in _CV2_INTERPOLATION else "bilinear",
            crop_pct=float(config.get("crop_pct") or cls.crop_pct),
            mean=tuple(float(v) for v in config.get("mean", cls.mean)),
            std=tuple(float(v) for v in config.get("std", cls.std)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def resize_size(self) -> int:
        """The shorter side an image is resized to before the center crop."""
        return math.floor(min(self.size) / self.crop_pct)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        return self.input_size[1], self.input_size[2]

    def with_size(self, size: int) -> Preprocess:
        """The same preprocessing for square inputs of `size` pixels."""
        return replace(self, input_size=(self.input_size[0], size, size))


# Below this shrink factor bilinear is as close to Pillow's antialiased bicubic (timm's eval
# resize) as INTER_AREA's slow general path, at a sixth of its cost (docs/performance.md).
_AREA_MIN_SHRINK = 1.25


def preprocess_image(
    image: np.ndarray, config: Preprocess, out: np.ndarray | None = None
) -> np.ndarray:
    """RGB uint8 HxWx3 → normalized float32 3xHxW, as timm's eval transform.

    Resize the shorter side to floor(size / crop_pct), center crop, normalize. Downscaling
    uses INTER_AREA, an anti-aliasing filter like Pillow's resize (OpenCV's bicubic would
    alias), or below a 1.25x shrink the 6x cheaper INTER_LINEAR, which every source pixel
    still reaches; upscaling uses the configured interpolation. `out` may be a
    preallocated (3, H, W) float32 slot of a batch.
    """
    crop_h, crop_w = config.size
    height = image.shape[0]
    resized_h, resized_w, top, left = crop_geometry(image.shape[:2], config)
    shrink = height / resized_h
    if shrink >= _AREA_MIN_SHRINK:
        interpolation = cv2.INTER_AREA
    elif shrink > 1:
        interpolation = cv2.INTER_LINEAR
    else:
        interpolation = _CV2_INTERPOLATION[config.interpolation]
    resized = cv2.resize(image, (resized_w, resized_h), interpolation=interpolation)
    crop = resized[top : top + crop_h, left : left + crop_w]

    mean = np.asarray(config.mean, dtype=np.float32)[:, None, None] * 255.0
    inv_std = 1.0 / (np.asarray(config.std, dtype=np.float32)[:, None, None] * 255.0)
    if out is None:
        out = np.empty((3, crop_h, crop_w), dtype=np.float32)
    # Two passes into `out`, no temporaries: 0.1 ms instead of 0.8 ms for a 224 crop.
    np.subtract(crop.transpose(2, 0, 1), mean, out=out, dtype=np.float32)
    out *= inv_std
    return out


def crop_geometry(image_size: tuple[int, int], config: Preprocess) -> tuple[int, int, int, int]:
    """(resized_h, resized_w, top, left): the size an image of (height, width) is resized
    to and where the center crop starts in it, as torchvision's Resize (longer side
    truncated) and CenterCrop."""
    crop_h, crop_w = config.size
    height, width = image_size
    scale_size = config.resize_size
    resized_h = scale_size if height <= width else int(scale_size * height / width)
    resized_w = scale_size if width <= height else int(scale_size * width / height)
    resized_h, resized_w = max(resized_h, crop_h), max(resized_w, crop_w)
    top = int(round((resized_h - crop_h) / 2.0))
    left = int(round((resized_w - crop_w) / 2.0))
    return resized_h, resized_w, top, left
