"""`ImageClassifier`: images in, top-k `Prediction`s out — the Python API of imgcls."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from imgcls.images import DEFAULT_MAX_PIXELS, ImageError, ImageSource, load_image
from imgcls.labels import Labels, labels_for
from imgcls.models import DEFAULT_MODEL, build_model, canonical_name
from imgcls.runtime import TorchRuntime
from imgcls.transforms import preprocess_image

__all__ = ["ImageClassifier", "Prediction"]


@dataclass(frozen=True)
class Prediction:
    """One ranked answer: `label` (human name), `class_id` (e.g. WordNet id), the model's
    output `index` and the softmax probability `score`."""

    label: str
    class_id: str
    index: int
    score: float

    def to_dict(self) -> dict[str, str | int | float]:
        return asdict(self)


class ImageClassifier:
    """A loaded model that classifies images.

    >>> clf = ImageClassifier()                    # EfficientNet-Lite0, ImageNet, offline
    >>> clf.classify_image("cat.jpg")[0].label
    'tiger cat'
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        weights: str | os.PathLike | None = None,
        pretrained: bool = True,
        device: str = "cpu",
        batch_size: int = 32,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        module, self.preprocess = build_model(model, pretrained=pretrained, weights=weights)
        self.name = canonical_name(model)
        self.runtime = TorchRuntime(module, device=device)
        self.labels: Labels = labels_for(_num_classes(module))
        self.batch_size = batch_size
        self.max_pixels = max_pixels

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def classify_image(self, image: ImageSource, top_k: int = 5) -> list[Prediction]:
        """Top-k predictions for one image (path, encoded bytes, RGB array or PIL image)."""
        return self.classify_images([image], top_k=top_k)[0]

    def classify_images(self, images: Sequence[ImageSource], top_k: int = 5) -> list[list[Prediction]]:
        """Top-k predictions for each image, run through the model in batches."""
        results: list[list[Prediction]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = np.stack([self.prepare(image) for image in chunk])
            results.extend(self.predict_batch(batch, top_k=top_k))
        return results

    def classify_paths(
        self, paths: Iterable[str | os.PathLike], top_k: int = 5
    ) -> Iterator[tuple[str, list[Prediction] | Exception]]:
        """Classify files in order, batching them; a file that fails yields its exception
        (FileNotFoundError or ImageError) in its place while the others go on."""
        pending: list[tuple[str, np.ndarray | Exception]] = []

        def flush() -> Iterator[tuple[str, list[Prediction] | Exception]]:
            arrays = [item for _, item in pending if isinstance(item, np.ndarray)]
            predictions = iter(self.predict_batch(np.stack(arrays), top_k) if arrays else [])
            for path, item in pending:
                yield path, next(predictions) if isinstance(item, np.ndarray) else item
            pending.clear()

        for path in paths:
            try:
                pending.append((str(path), self.prepare(path)))
            except (FileNotFoundError, ImageError) as exc:
                pending.append((str(path), exc))
            if len(pending) >= self.batch_size:
                yield from flush()
        yield from flush()

    def prepare(self, image: ImageSource) -> np.ndarray:
        """Decode and preprocess one image to the model's (3, H, W) float32 input."""
        return preprocess_image(load_image(image, max_pixels=self.max_pixels), self.preprocess)

    def predict_batch(self, batch: np.ndarray, top_k: int = 5) -> list[list[Prediction]]:
        """Top-k predictions for a preprocessed (N, 3, H, W) batch."""
        return self.top_predictions(self.predict_proba(batch), top_k=top_k)

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities, (N, num_classes) float64, for a preprocessed batch."""
        return softmax(self.runtime(batch))

    def top_predictions(self, probabilities: np.ndarray, top_k: int = 5) -> list[list[Prediction]]:
        """The top-k `Prediction`s of each row of a (N, num_classes) probability array."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        k = min(top_k, self.num_classes)
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [
            [
                Prediction(self.labels.names[i], self.labels.class_ids[i], int(i), float(row[i]))
                for i in indices
            ]
            for row, indices in zip(probabilities, order, strict=True)
        ]

    def __repr__(self) -> str:
        return f"ImageClassifier({self.name!r}, classes={self.num_classes}, backend={self.runtime.backend!r})"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed in float64 so tiny probabilities do not round to zero."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _num_classes(module) -> int:
    num_classes = getattr(module, "num_classes", None)
    if num_classes is None:  # torchvision models keep it only in their last layer
        num_classes = module.classifier[-1].out_features
    return int(num_classes)

