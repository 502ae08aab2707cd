"""Training augmentation: albumentations presets (`none | light | strong`) in front of the
eval transform's normalisation. `choose_augmentation` fits the preset to the data (no flips
where a mirrored image looks like another class, no crops that cut a small image's object
away), from what `survey_images` measures on a sample of the training images.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from imgcls.data.images import decode_workers, load_image
from imgcls.data.preprocess import _CV2_INTERPOLATION, Preprocess, preprocess_image
from imgcls.errors import ImageError

__all__ = [
    "AUGMENT_PRESETS",
    "Augmentation",
    "ImageSurvey",
    "SMALL_IMAGE_SIDE",
    "choose_augmentation",
    "survey_images",
    "train_transform",
]

AUGMENT_PRESETS = ("none", "light", "strong")


# At or below this many pixels (input side, or the training images' median shorter side)
# an image is one object filling the frame (digits, icons, CIFAR): a random crop of 35% of
# it cuts the object away, so training shifts and rescales it slightly instead, as CIFAR's
# pad-and-crop does. docs/train.md has the measurement.
SMALL_IMAGE_SIDE = 64


@dataclass(frozen=True)
class ImageSurvey:
    """What the default augmentation is chosen from, measured on a sample of the training
    images: their size, and whether a left-right mirror keeps an image's label — judged by
    leave-one-out 1-nearest-neighbour on 32-px grayscale thumbnails, with each query image
    as it is and mirrored. Glyphs (handwritten or printed digits) lose most of their
    accuracy when mirrored (0.98 -> 0.34, 0.84 -> 0.40); small photos keep it. Pixels
    cannot tell a label that a mirror changes from an orientation that it changes
    (mirrored grass blades lean the other way: textures 0.78 -> 0.55), so the survey
    decides flips for small images only (docs/train.md)."""

    images: int  # how many training images were looked at
    median_side: int  # their shorter side in pixels, the median
    chance: float  # 1 / number of classes
    accuracy: float  # 1-NN accuracy of the images as they are
    flipped_accuracy: float  # the same with each query image mirrored
    flip_z: float  # McNemar's statistic for the difference (> 3: not chance)

    @property
    def flips_keep_labels(self) -> bool:
        """False when mirroring loses a third or more of the accuracy above chance, and
        the loss is no accident of the sample (z ≥ 3)."""
        lost = self.accuracy - self.flipped_accuracy
        return not (self.flip_z >= 3 and lost >= (self.accuracy - self.chance) / 3)

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def survey_images(
    samples: Sequence[tuple[Path, int]], seed: int = 0, per_class: int = 100
) -> ImageSurvey:
    """Measure an `ImageSurvey` on up to `per_class` images of each class of `samples`
    ((file, class index) pairs), drawn with `seed`. A file that does not decode is left
    out (the data scan has already reported it)."""
    from PIL import Image

    def side_and_thumbnail(path: Path) -> tuple[int, np.ndarray] | None:
        try:
            with Image.open(path) as header:  # the size before a reduced decode
                side = min(header.size)
            image = load_image(path, min_side=32)
        except (OSError, ImageError):
            return None
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        return side, cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA)

    rng = np.random.default_rng(seed)
    by_class: dict[int, list[Path]] = {}
    for path, label in samples:
        by_class.setdefault(label, []).append(path)
    chosen = [
        (label, paths[index])
        for label, paths in sorted(by_class.items())
        for index in sorted(rng.permutation(len(paths))[:per_class])
    ]
    thumbnails, labels, sides = [], [], []
    # Decoding releases the GIL: threads on all cores (100 images per class of ImageNet
    # would be minutes on one).
    with ThreadPoolExecutor(decode_workers()) as pool:
        measured = pool.map(side_and_thumbnail, [path for _, path in chosen])
        for (label, _), result in zip(chosen, measured, strict=True):
            if result is not None:
                sides.append(result[0])
                thumbnails.append(result[1])
                labels.append(label)
    y = np.asarray(labels)
    thumbs = np.asarray(thumbnails, dtype=np.float32)

    def unit_rows(batch: np.ndarray) -> np.ndarray:  # cosine similarity of centred pixels
        rows = batch.reshape(len(batch), -1)
        rows = rows - rows.mean(axis=1, keepdims=True)
        return rows / (np.linalg.norm(rows, axis=1, keepdims=True) + 1e-6)

    reference = unit_rows(thumbs)
    hits = []
    for queries in (reference, unit_rows(thumbs[:, :, ::-1])):
        similarity = queries @ reference.T
        np.fill_diagonal(similarity, -np.inf)  # leave one out: never the image itself
        hits.append(y[similarity.argmax(axis=1)] == y)
    kept, mirrored = hits
    lost, gained = int((kept & ~mirrored).sum()), int((~kept & mirrored).sum())
    return ImageSurvey(
        images=len(y),
        median_side=int(np.median(sides)),
        chance=1 / len(by_class),
        accuracy=float(kept.mean()),
        flipped_accuracy=float(mirrored.mean()),
        flip_z=(lost - gained) / math.sqrt(lost + gained) if lost + gained else 0.0,
    )


@dataclass(frozen=True)
class Augmentation:
    """The training augmentation actually used; printed and stored in config.json."""

    preset: str  # none | light | strong
    hflip: bool  # random left-right mirror
    crop: str  # center (the eval crop) | random-resized (35-100% of the image) | shift
    reason: str = ""  # why flips and crop are what they are
    survey: ImageSurvey | None = None  # what the choice was made from

    def describe(self) -> str:
        if self.preset == "none":
            return "none (the eval transform)"
        crop = {
            "random-resized": "random resized crop (35-100% of the image)",
            "shift": "shift ±12.5% and scale 0.9-1.1 (the whole image kept)",
        }[self.crop]
        flip = "horizontal flip" if self.hflip else "no flip"
        return f"{self.preset}: {crop}, {flip}" + (f" ({self.reason})" if self.reason else "")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "survey": self.survey and self.survey.to_dict()}


def choose_augmentation(
    preset: str,
    input_side: int,
    hflip: bool | None = None,
    survey: ImageSurvey | None = None,
) -> Augmentation:
    """The augmentation for `preset` on these data. Small images (`SMALL_IMAGE_SIDE`) are
    shifted rather than cropped; `hflip` None flips them only where the survey finds that
    a mirror keeps labels, and flips larger images (photos, where a mirror is another view
    of the same thing)."""
    if preset not in AUGMENT_PRESETS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENT_PRESETS)}, got {preset!r}")
    if preset == "none":
        return Augmentation("none", hflip=False, crop="center")
    reasons = []
    small = input_side <= SMALL_IMAGE_SIDE
    if survey is not None and survey.median_side <= SMALL_IMAGE_SIDE:
        small = True
        reasons.append(f"images of {survey.median_side} px")
    elif small:
        reasons.append(f"{input_side} px input")
    if hflip is None:
        hflip = not (small and survey is not None and not survey.flips_keep_labels)
        if not hflip:
            reasons.append(
                "mirrored images look like other classes: 1-NN accuracy "
                f"{survey.accuracy:.2f} -> {survey.flipped_accuracy:.2f}"
            )
    else:
        reasons.append("flip " + ("on" if hflip else "off") + " as asked")
    crop = "shift" if small else "random-resized"
    return Augmentation(preset, hflip, crop, reason="; ".join(reasons), survey=survey)


def train_transform(
    config: Preprocess, augment: Augmentation | str = "light", seed: int | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """RGB uint8 HxWx3 → normalized float32 3xHxW with random augmentation.

    `none` is the eval transform; `light` a random crop (or, for small images, a shift and
    slight rescale of the whole image) and, where it keeps labels, a horizontal flip;
    `strong` adds rotation, colour jitter, blur or noise, RandAugment-like photometric ops
    and coarse dropout (random erasing). A preset name alone means `choose_augmentation`
    without a survey. The returned callable has `set_random_seed(seed)` so that data
    loader workers can be seeded reproducibly.
    """
    if isinstance(augment, str):
        augment = choose_augmentation(augment, min(config.size))
    if augment.preset == "none":
        return _EvalTransform(config)
    # albumentations asks PyPI for a newer version on import unless told not to; imgcls
    # never touches the network at run time.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    height, width = config.size
    interpolation = _CV2_INTERPOLATION[config.interpolation]
    if augment.crop == "shift":  # the eval crop, then a small random shift and rescale
        ops: list[Any] = [
            A.SmallestMaxSize(config.resize_size, interpolation=interpolation),
            A.CenterCrop(height, width),
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.125, 0.125),
                interpolation=interpolation,
                border_mode=cv2.BORDER_REPLICATE,
            ),
        ]
    else:
        ops = [A.RandomResizedCrop((height, width), scale=(0.35, 1.0), interpolation=interpolation)]
    if augment.hflip:
        ops.append(A.HorizontalFlip())
    if augment.preset == "strong":
        ops += [
            A.Affine(rotate=(-15, 15), border_mode=cv2.BORDER_REFLECT_101, p=0.5),
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.8),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.08))]),
            # RandAugment-like: two photometric ops drawn per image.
            A.SomeOf(
                [
                    A.Posterize(num_bits=(4, 6)),
                    A.Solarize(threshold_range=(0.5, 1.0)),
                    A.Equalize(),
                    A.Sharpen(),
                    A.AutoContrast(),
                    A.RandomGamma(),
                ],
                n=2,
                p=0.5,
            ),
            A.CoarseDropout(
                num_holes_range=(1, 3), hole_height_range=(0.1, 0.3), hole_width_range=(0.1, 0.3)
            ),
        ]
    ops.append(A.Normalize(mean=config.mean, std=config.std, max_pixel_value=255.0))
    return _AlbumentationsTransform(A.Compose(ops, seed=seed))


class _EvalTransform:
    """The eval transform behind the train-transform interface (augment = none)."""

    def __init__(self, config: Preprocess) -> None:
        self.config = config

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return preprocess_image(image, self.config)

    def set_random_seed(self, seed: int) -> None:
        """Nothing random to seed."""


class _AlbumentationsTransform:
    def __init__(self, compose: Any) -> None:
        self.compose = compose

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.compose(image=image)["image"].transpose(2, 0, 1))

    def set_random_seed(self, seed: int) -> None:
        self.compose.set_random_seed(seed)
