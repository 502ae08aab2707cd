"""`ImageClassifier`: images in, top-k `Prediction`s out — the Python API of imgcls."""

from __future__ import annotations

import itertools
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.checkpoint import is_run_dir, read_run_config
from imgcls.export import (
    OnnxMetadata,
    cached_export,
    read_metadata,
    recall_export,
    remember_export,
)
from imgcls.heads import OnnxHead
from imgcls.images import DEFAULT_MAX_PIXELS, ImageError, ImageSource, load_image
from imgcls.labels import Labels, labels_for
from imgcls.models import DEFAULT_MODEL, build_model, canonical_name, weights_fingerprint
from imgcls.runtime import HeadRuntime, OnnxRuntime, TorchRuntime
from imgcls.transforms import preprocess_image

__all__ = ["BACKENDS", "ImageClassifier", "Prediction"]

# "auto": ONNX Runtime on the CPU (measured 3x eager PyTorch there, docs/performance.md),
# PyTorch on an accelerator or when a model does not export.
BACKENDS = ("auto", "torch", "onnx")


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

    `model` is a registry name, a run directory or an exported `.onnx` file. `backend`
    "auto" runs ONNX Runtime on the CPU (the model is exported once into the cache of
    `imgcls.export.cache_dir()`) and PyTorch elsewhere; "torch" and "onnx" force one.
    `threads` caps ONNX Runtime's threads (default: the cores this process may use).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        weights: str | os.PathLike | None = None,
        pretrained: bool = True,
        device: str = "cpu",
        backend: str = "auto",
        batch_size: int = 32,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self._source = None if str(model).endswith(".onnx") else (str(model), weights, pretrained)
        self._module = None
        if self._source is None:  # an export carries its labels and preprocessing
            metadata = read_metadata(model)
            self.name = str(model)
            self.labels, self.preprocess = metadata.labels, metadata.preprocess
            self.runtime: TorchRuntime | OnnxRuntime | HeadRuntime = OnnxRuntime(model, threads)
        else:
            self._load(str(model), weights, pretrained, device, backend, threads)
        self.batch_size = batch_size
        self.max_pixels = max_pixels

    def _load(
        self, model: str, weights: str | os.PathLike | None, pretrained: bool, device: str,
        backend: str, threads: int | None,
    ) -> None:  # fmt: skip
        config = read_run_config(model) if is_run_dir(model) else None
        self.name = model if config is not None else canonical_name(model)
        wants_onnx = backend == "onnx" or (backend == "auto" and device == "cpu")
        fingerprint = weights_fingerprint(model, pretrained=pretrained, weights=weights)
        cached = recall_export(fingerprint) if wants_onnx and fingerprint else None
        if cached is not None:  # a later start: no torch, no model to build
            metadata = read_metadata(cached)
            self.labels, self.preprocess = metadata.labels, metadata.preprocess
            self.runtime = OnnxRuntime(cached, threads)
        else:
            self._module, self.preprocess = build_model(
                model, pretrained=pretrained, weights=weights
            )
            self.labels = labels_for(_num_classes(self._module))
            self.runtime = self._runtime(device, backend, threads, fingerprint)
        if config is not None:  # a trained run: its class folder names are the labels
            self.labels = Labels.from_names(config["class_names"])
            if config.get("classifier", "softmax") != "softmax":
                self.runtime = HeadRuntime(self.runtime, OnnxHead(Path(model) / config["head"]))

    @property
    def module(self):
        """The PyTorch model (for export, Grad-CAM, training heads); built on first use
        when the runtime came from the export cache, None for an `.onnx` file."""
        if self._module is None and self._source is not None:
            model, weights, pretrained = self._source
            self._module, _ = build_model(model, pretrained=pretrained, weights=weights)
        return self._module

    def _runtime(
        self, device: str, backend: str, threads: int | None, fingerprint: str | None
    ) -> TorchRuntime | OnnxRuntime:
        if backend == "torch" or (backend == "auto" and device != "cpu"):
            return TorchRuntime(self.module, device=device)
        try:
            path = cached_export(self.module, self.export_metadata(self.module))
        except Exception as exc:  # any exporter failure: "auto" still has a working path
            if backend == "onnx":
                raise
            warnings.warn(
                f"{self.name}: ONNX export failed ({type(exc).__name__}: {exc}); "
                "running on PyTorch instead",
                RuntimeWarning,
                stacklevel=3,
            )
            return TorchRuntime(self.module, device=device)
        if fingerprint is not None:
            remember_export(fingerprint, path)
        return OnnxRuntime(path, threads)

    def export_metadata(self, module) -> OnnxMetadata:
        """What an ONNX export of `module` says of itself (a head run's backbone keeps its
        own, ImageNet, outputs)."""
        outputs = _num_classes(module)
        labels = self.labels if len(self.labels) == outputs else labels_for(outputs)
        return OnnxMetadata(self.name, labels, self.preprocess)

    def run_metadata(self) -> OnnxMetadata:
        """What an ONNX export of this whole classifier says of itself."""
        return OnnxMetadata(self.name, self.labels, self.preprocess)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def classify_image(self, image: ImageSource, top_k: int = 5) -> list[Prediction]:
        """Top-k predictions for one image (path, encoded bytes, RGB array or PIL image)."""
        return self.classify_images([image], top_k=top_k)[0]

    def classify_images(
        self, images: Sequence[ImageSource], top_k: int = 5
    ) -> list[list[Prediction]]:
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
        for chunk in self._prepared_batches(paths):
            yield from _apply_to_batch(chunk, lambda batch: self.predict_batch(batch, top_k))

    def features_paths(
        self, paths: Iterable[str | os.PathLike]
    ) -> Iterator[tuple[str, np.ndarray | Exception]]:
        """Pooled penultimate features of each file, in order, failures in place."""
        for chunk in self._prepared_batches(paths):
            yield from _apply_to_batch(chunk, self.runtime.features)

    def prepared_paths(
        self, paths: Iterable[str | os.PathLike]
    ) -> Iterator[tuple[str, np.ndarray | Exception]]:
        """Each file decoded and preprocessed, in order; a failure (FileNotFoundError or
        ImageError) in its place. A thread pool decodes ahead while the caller runs the
        model: OpenCV and ONNX Runtime both release the GIL."""
        workers = min(4, len(os.sched_getaffinity(0)))
        lookahead = 2 * self.batch_size
        with ThreadPoolExecutor(workers, thread_name_prefix="imgcls-decode") as pool:
            pending: deque[tuple[str, Future]] = deque()
            for path in paths:
                pending.append((str(path), pool.submit(self._prepare_or_error, path)))
                if len(pending) > lookahead:
                    name, future = pending.popleft()
                    yield name, future.result()
            for name, future in pending:
                yield name, future.result()

    def _prepared_batches(
        self, paths: Iterable[str | os.PathLike]
    ) -> Iterator[list[tuple[str, np.ndarray | Exception]]]:
        prepared = self.prepared_paths(paths)
        while chunk := list(itertools.islice(prepared, self.batch_size)):
            yield chunk

    def _prepare_or_error(self, path: str | os.PathLike) -> np.ndarray | Exception:
        try:
            return self.prepare(path)
        except (FileNotFoundError, ImageError) as exc:
            return exc

    def prepare(self, image: ImageSource) -> np.ndarray:
        """Decode and preprocess one image to the model's (3, H, W) float32 input."""
        decoded = load_image(
            image, max_pixels=self.max_pixels, min_side=self.preprocess.resize_size
        )
        return preprocess_image(decoded, self.preprocess)

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
        backend = self.runtime.backend
        return f"ImageClassifier({self.name!r}, classes={self.num_classes}, backend={backend!r})"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed in float64 so tiny probabilities do not round to zero."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _apply_to_batch(
    chunk: list[tuple[str, np.ndarray | Exception]], model_call: Callable[[np.ndarray], Sequence]
) -> Iterator[tuple[str, Any]]:
    """Run `model_call` once on the decoded items of `chunk`; failures pass through."""
    arrays = [item for _, item in chunk if isinstance(item, np.ndarray)]
    outputs = iter(model_call(np.stack(arrays)) if arrays else [])
    for path, item in chunk:
        yield path, next(outputs) if isinstance(item, np.ndarray) else item


def _num_classes(module) -> int:
    num_classes = getattr(module, "num_classes", None)
    if num_classes is None:  # torchvision models keep it only in their last layer
        num_classes = module.classifier[-1].out_features
    return int(num_classes)
