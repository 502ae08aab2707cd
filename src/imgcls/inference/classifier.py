"""`ImageClassifier`: images in, top-k `Prediction`s out — the Python API of imgcls."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.data.images import DEFAULT_MAX_PIXELS, EncodedImage, ImageSource, load_image
from imgcls.data.prefetch import Prefetcher, PreparedBatch
from imgcls.data.preprocess import Preprocess, preprocess_image
from imgcls.errors import ConfigError, ModelError
from imgcls.inference.backends import (
    BACKENDS,
    cache_key,
    cached_runtime,
    choose_runtime,
    export_runtime,
)
from imgcls.inference.heads import OnnxHead
from imgcls.inference.precision import PRECISIONS
from imgcls.inference.runtime import (
    HeadRuntime,
    OnnxMetadata,
    OnnxRuntime,
    OpenVinoRuntime,
    TorchRuntime,
)
from imgcls.models.labels import Labels, labels_for
from imgcls.models.registry import DEFAULT_MODEL, build_model, canonical_name
from imgcls.models.run_dir import is_run_dir, read_run_config
from imgcls.trust.calibration import Rejection, sigmoid, softmax
from imgcls.trust.conformal import Conformal
from imgcls.trust.hierarchy import DEFAULT_ANSWER_CONFIDENCE, Answer, Taxonomy, wordnet_taxonomy
from imgcls.validation import check_scalar

__all__ = ["BACKENDS", "PRECISIONS", "ImageClassifier", "ModelBundle", "Prediction", "Predictions"]

# A file to classify: its path, or its bytes read elsewhere (object storage, Ray).
File = str | os.PathLike | EncodedImage


@dataclass(frozen=True)
class Prediction:
    """One ranked answer: `label` (human name), `class_id` (e.g. WordNet id), the model's
    output `index` and its probability `score`: (calibrated) softmax, or for a multi-label
    model the class's own sigmoid. `unknown` is the same on every answer for an image: True
    when the model declines to name it (its rejection rule, or `min_score`, says the image
    looks unlike anything it can answer reliably; a multi-label model: no class passes its
    threshold). `present`: the model asserts this class (the top-1 of a single-label model
    unless unknown; every class at or above its threshold for a multi-label one)."""

    label: str
    class_id: str
    index: int
    score: float
    unknown: bool = False
    present: bool = False

    def to_dict(self) -> dict[str, str | int | float]:
        # Spelled out: dataclasses.asdict deep-copies each field, 4.4 µs against 0.15 µs,
        # five times per image on the service's hot path.
        return {
            "label": self.label,
            "class_id": self.class_id,
            "index": self.index,
            "score": self.score,
            "unknown": self.unknown,
            "present": self.present,
        }


class Predictions(list[Prediction]):
    """One image's top-k `Prediction`s, best first (a plain list to every caller), and
    `labels`: the names the model asserts, best first — every class marked `present`,
    also those ranked below the top k; none when the image is unknown. With a coverage
    level, `prediction_set`: the conformal set, most probable first; with a taxonomy,
    `answer`: the deepest node sure enough (None when none is; `hierarchical` says the
    model has a taxonomy)."""

    def __init__(
        self,
        predictions: Iterable[Prediction] = (),
        labels: Iterable[str] = (),
        prediction_set: Iterable[str] | None = None,
        answer: Answer | None = None,
        hierarchical: bool = False,
    ):
        super().__init__(predictions)
        self.labels = tuple(labels)
        self.prediction_set = None if prediction_set is None else tuple(prediction_set)
        self.answer, self.hierarchical = answer, hierarchical

    def to_dict(self) -> dict[str, Any]:
        """The JSON of one result: `predictions` and `labels` (INTERFACE.md), and
        `prediction_set` and `answer` when the model gives them."""
        result: dict[str, Any] = {
            "predictions": [p.to_dict() for p in self],
            "labels": list(self.labels),
        }
        if self.prediction_set is not None:
            result["prediction_set"] = list(self.prediction_set)
        if self.hierarchical:
            result["answer"] = None if self.answer is None else self.answer.to_dict()
        return result


@dataclass(frozen=True)
class ModelBundle:
    """An ONNX Runtime classifier whole, in memory: its ONNX file (and a classical head's)
    as bytes, with what the files do not hold. It pickles, so Ray ships it to its actors
    (`imgcls.ray`), where `ImageClassifier(bundle)` loads it with no file, no export cache
    and no PyTorch — and answers as the classifier it was made from."""

    name: str
    labels: Labels
    preprocess: Preprocess
    model: bytes  # the ONNX export: `input` -> `logits`, `features` (imgcls.export)
    head: bytes | None = None  # a classical head's ONNX file: features -> probabilities
    temperature: float = 1.0  # a run's calibration (see ImageClassifier.predict_proba)
    rejection: Rejection | None = None  # a run's "unknown" rule, k-NN reference included
    thresholds: tuple[float, ...] | None = None  # a multi-label run's, per class
    precision: str = "fp32"  # what it ran at: the loaded bundle runs so unless told otherwise
    conformal: Conformal | None = None  # a run's conformal calibration (prediction sets)
    taxonomy: dict[str, Any] | None = None  # a run's taxonomy entry (hierarchical answers)


class ImageClassifier:
    """A loaded model that classifies images.

    >>> clf = ImageClassifier()                    # EfficientNet-Lite0, ImageNet, offline
    >>> clf.classify_image("cat.jpg")[0].label
    'tiger cat'

    `model` is a registry name, a run directory, an exported `.onnx` file or a
    `ModelBundle` (`device` "cuda" runs a bundle on ONNX Runtime's CUDA provider). `backend`
    "auto" runs the model's export on the CPU (exported once into the cache of
    `imgcls.inference.backends.cache_dir()`) and PyTorch elsewhere; "torch", "onnx" (ONNX
    Runtime) and "openvino" force one. `precision` "auto" is bf16 on OpenVINO where the CPU
    has it and the parity gate passes (`imgcls.inference.precision`), else fp32 ("fp32",
    "bf16" force one; "int8" is an `imgcls export --int8` file's); `.precision` says which ran.
    `threads` caps ONNX Runtime's threads (default: the cores this process may use).
    `batch_size` is images per model call: 8 keeps a 2-core CPU's pipeline busiest
    (`predict DIR` on 500 photos: 80 images/s against 75 at 32); raise it on a GPU.
    `img_size` makes the inputs square images of that many pixels instead of the model's
    own size (smaller is faster, e.g. for features of small images); an `.onnx` file keeps
    the size it was exported with.
    `coverage` (e.g. 0.9) adds each result's conformal `prediction_set`: the labels that
    hold the true one with that probability (a run fitted them on its calibration split;
    ModelError for a model without one). A model with a taxonomy (a run's, or WordNet for
    ImageNet classes) answers the deepest node whose probability reaches
    `answer_confidence` (default: the run's, else 0.9).
    """

    def __init__(
        self,
        model: str | ModelBundle = DEFAULT_MODEL,
        *,
        weights: str | os.PathLike | None = None,
        pretrained: bool = True,
        device: str = "cpu",
        backend: str = "auto",
        precision: str = "auto",
        batch_size: int = 8,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        threads: int | None = None,
        img_size: int | None = None,
        coverage: float | None = None,
        answer_confidence: float | None = None,
    ) -> None:
        check_scalar(batch_size, "batch_size", int, min_val=1)
        _check_level(coverage, "coverage")
        _check_level(answer_confidence, "answer_confidence")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if backend == "torch" and precision not in ("auto", "fp32"):
            raise ConfigError(
                f"backend torch runs fp32; precision {precision} runs on an export "
                "(backend auto, onnx or openvino; bf16 on openvino)"
            )
        check_scalar(img_size, "img_size", int, min_val=1, allow_none=True)
        exported = isinstance(model, ModelBundle) or str(model).endswith(".onnx")
        self._source = None if exported else (str(model), weights, pretrained)
        self._module = None
        self.runtime: TorchRuntime | OnnxRuntime | OpenVinoRuntime | HeadRuntime
        if isinstance(model, ModelBundle):
            if backend == "torch" or img_size is not None:
                raise ValueError(f"{model.name}: a bundle runs on ONNX at its exported size")
            self._load_bundle(model, threads, device, backend, precision)
        elif self._source is None:
            if img_size is not None:
                raise ValueError(f"{model}: an .onnx file keeps its exported size; no img_size")
            self._load_export(str(model), threads, backend, precision)
        else:
            self._load(
                str(model), weights, pretrained, device, backend, threads, img_size, precision
            )
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.taxonomy, stored = self._taxonomy(self._taxonomy_entry)
        self.answer_confidence = answer_confidence or stored
        self.check_coverage(coverage)
        self.coverage = coverage

    def _taxonomy(self, entry: dict[str, Any] | None) -> tuple[Taxonomy | None, float]:
        """A run's taxonomy (its config entry), or WordNet's for ImageNet classes; and the
        answer confidence it stores."""
        confidence = DEFAULT_ANSWER_CONFIDENCE
        if self.multi_label:  # summed probabilities mean nothing for independent sigmoids
            return None, confidence
        if entry:
            names = entry.get("names")
            taxonomy = Taxonomy(entry["parents"], self.labels.class_ids, self.labels.names, names)
            return taxonomy, float(entry.get("answer_confidence", confidence))
        return wordnet_taxonomy(self.labels), confidence

    def check_coverage(self, coverage: float | None) -> None:
        """ModelError when `coverage` is asked of a model without a conformal calibration."""
        _check_level(coverage, "coverage")
        if coverage is not None and self.conformal is None:
            raise ModelError(
                f"{self.name}: has no calibration split, so no prediction set with a coverage "
                "guarantee; train a run on labelled images (`imgcls train DATA --out RUN`): "
                "its validation split calibrates its sets",
                parameters=("coverage",),
            )

    def _load_export(self, path: str, threads: int | None, backend: str, precision: str) -> None:
        """An exported file: it carries its labels, preprocessing and calibration."""
        self.name = path
        self.runtime = export_runtime(path, backend, precision, threads)
        metadata = self.runtime.metadata
        self.labels, self.preprocess = metadata.labels, metadata.preprocess
        self.temperature = metadata.temperature
        self.thresholds = _as_array(metadata.thresholds)
        self.rejection = (
            None if metadata.threshold is None else Rejection("max_prob", metadata.threshold)
        )
        self.conformal = _conformal(metadata.conformal)
        self._taxonomy_entry = metadata.taxonomy

    def _load_bundle(
        self, bundle: ModelBundle, threads: int | None, device: str, backend: str, precision: str
    ) -> None:
        self.name, self.labels, self.preprocess = bundle.name, bundle.labels, bundle.preprocess
        self.temperature, self.rejection = bundle.temperature, bundle.rejection
        self.thresholds = _as_array(bundle.thresholds)
        self.conformal, self._taxonomy_entry = bundle.conformal, bundle.taxonomy
        if device == "cpu":
            precision = bundle.precision if precision == "auto" else precision
            self.runtime = export_runtime(bundle.model, backend, precision, threads)
        else:
            self.runtime = OnnxRuntime(bundle.model, threads, device)
        if bundle.head is not None:
            self.runtime = HeadRuntime(self.runtime, OnnxHead(bundle.head), self.multi_label)

    def bundle(self) -> ModelBundle:
        """This classifier as a `ModelBundle` (ModelError when it runs on PyTorch)."""
        runtime, head = self.runtime, None
        if isinstance(runtime, HeadRuntime):
            runtime, head = runtime.backbone, runtime.head.model_bytes()
        if not isinstance(runtime, OnnxRuntime | OpenVinoRuntime):
            raise ModelError(
                f"{self.name}: runs on PyTorch, and only an ONNX Runtime classifier makes a "
                "bundle (load it with backend='onnx')"
            )
        return ModelBundle(
            self.name,
            self.labels,
            self.preprocess,
            runtime.model_bytes(),
            head,
            self.temperature,
            self.rejection,
            _as_tuple(self.thresholds),
            runtime.precision,
            self.conformal,
            self._taxonomy_entry,
        )

    def _load(
        self, model: str, weights: str | os.PathLike | None, pretrained: bool, device: str,
        backend: str, threads: int | None, img_size: int | None, precision: str,
    ) -> None:  # fmt: skip
        """A registry model or a run directory, on the runtime `backend` chooses."""
        config = read_run_config(model) if is_run_dir(model) else None
        # A run's temperature and "unknown" rule, fitted on its validation split (see
        # imgcls.trust.calibration); registry models have neither.
        self.temperature = float(config.get("temperature", 1.0)) if config else 1.0
        self.rejection = Rejection.from_config(config, model) if config else None
        # A multi-label run's per-class thresholds (imgcls.trust.multilabel), else None.
        multi_label = config is not None and config.get("multi_label", False)
        self.thresholds = _as_array(config["thresholds"]) if multi_label else None
        # Its conformal calibration and taxonomy (imgcls.trust.conformal, .hierarchy).
        self.conformal = _conformal(config.get("conformal")) if config else None
        self._taxonomy_entry = config.get("taxonomy") if config else None
        self.name = model if config is not None else canonical_name(model)
        key = cache_key(model, pretrained=pretrained, weights=weights, img_size=img_size)
        cached = cached_runtime(
            key, device=device, backend=backend, threads=threads, precision=precision
        )
        if cached is not None:  # a later start: no torch, no model to build
            self.runtime = cached
            self.labels, self.preprocess = cached.metadata.labels, cached.metadata.preprocess
        else:
            self._module, self.preprocess = build_model(
                model, pretrained=pretrained, weights=weights
            )
            if img_size is not None:
                self.preprocess = self.preprocess.with_size(img_size)
            self.labels = labels_for(_num_classes(self._module))
            self.runtime = choose_runtime(
                self._module,
                self.export_metadata(self._module),
                device=device,
                backend=backend,
                threads=threads,
                key=key,
                precision=precision,
            )
        if config is not None:  # a trained run: its class folder names are the labels
            self.labels = Labels.from_names(config["class_names"])
            if config.get("classifier", "softmax") != "softmax":
                head = OnnxHead(Path(model) / config["head"])
                self.runtime = HeadRuntime(self.runtime, head, self.multi_label)

    @property
    def module(self):
        """The PyTorch model (for export, Grad-CAM, training heads); built on first use
        when the runtime came from the export cache, None for an `.onnx` file."""
        if self._module is None and self._source is not None:
            model, weights, pretrained = self._source
            self._module, _ = build_model(model, pretrained=pretrained, weights=weights)
        return self._module

    def export_metadata(self, module) -> OnnxMetadata:
        """What an ONNX export of `module` says of itself (a head run's backbone keeps its
        own, ImageNet, outputs)."""
        outputs = _num_classes(module)
        if len(self.labels) != outputs:
            return OnnxMetadata(self.name, labels_for(outputs), self.preprocess)
        return self.run_metadata()

    def run_metadata(self) -> OnnxMetadata:
        """What an ONNX export of this whole classifier says of itself. The run's
        temperature travels with it; a threshold only when it reads the top-1 probability
        (the k-NN score needs the training features, which stay in the run)."""
        threshold = None
        if self.rejection is not None and not self.rejection.needs_features:
            threshold = self.rejection.threshold
        thresholds = _as_tuple(self.thresholds)
        conformal = None if self.conformal is None else self.conformal.to_config()
        return OnnxMetadata(
            self.name, self.labels, self.preprocess, self.temperature, threshold, thresholds,
            conformal, self._taxonomy_entry,
        )  # fmt: skip

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def multi_label(self) -> bool:
        """Whether each class is judged on its own (sigmoid, per-class thresholds)."""
        return self.thresholds is not None

    # -- images in (paths, bytes, arrays), predictions out --------------------------------

    def classify_image(
        self, image: ImageSource, top_k: int = 5, min_score: float | None = None
    ) -> Predictions:
        """Top-k predictions for one image (path, encoded bytes, RGB array or PIL image),
        and the labels the model asserts (`.labels`).

        `min_score` replaces the model's own "unknown" rule: the image is unknown when its
        top score is below it (for a multi-label model it replaces every class's
        threshold)."""
        return self.classify_images([image], top_k=top_k, min_score=min_score)[0]

    def classify_images(
        self, images: Sequence[ImageSource], top_k: int = 5, min_score: float | None = None
    ) -> list[Predictions]:
        """Top-k predictions for each image, run through the model in batches."""
        results: list[Predictions] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = np.stack([self.prepare(image) for image in chunk])
            results.extend(self.predict_batch(batch, top_k=top_k, min_score=min_score))
        return results

    # -- files in, in order, decoded ahead of the model; a failed file yields its error ----

    def classify_paths(
        self, paths: Iterable[File], top_k: int = 5, min_score: float | None = None
    ) -> Iterator[tuple[str, Predictions | Exception]]:
        """Classify files (paths, or `EncodedImage`s) in order, batching them; a file that
        fails yields its exception (FileNotFoundError or ImageError) in its place while the
        others go on."""
        for batch in self._prepared_batches(paths):
            yield from batch.apply(lambda inputs: self.predict_batch(inputs, top_k, min_score))

    def scored_paths(
        self, paths: Iterable[File]
    ) -> Iterator[tuple[str, tuple[np.ndarray, float] | Exception]]:
        """(all class probabilities, rejection score) of each file, failures in place; the
        score is NaN when the model has no rejection rule."""

        def rows(batch: np.ndarray) -> list[tuple[np.ndarray, float]]:
            probabilities, scores = self.predict_scored(batch)
            if scores is None:
                scores = np.full(len(probabilities), np.nan)
            return list(zip(probabilities, scores.tolist(), strict=True))

        for batch in self._prepared_batches(paths):
            yield from batch.apply(rows)

    def features_paths(self, paths: Iterable[File]) -> Iterator[tuple[str, np.ndarray | Exception]]:
        """Pooled penultimate features of each file, in order, failures in place."""
        for batch in self._prepared_batches(paths):
            yield from batch.apply(self.runtime.features)

    def prepared_paths(self, paths: Iterable[File]) -> Iterator[tuple[str, np.ndarray | Exception]]:
        """Each file decoded and preprocessed, in order; a failure (FileNotFoundError or
        ImageError) in its place."""
        for batch in self._prepared_batches(paths):
            yield from batch.apply(lambda inputs: inputs)

    def _prepared_batches(self, paths: Iterable[File]) -> Iterator[PreparedBatch]:
        """The files in batches of model input, decoded ahead of the model."""
        prefetcher = Prefetcher(self.prepare, self.preprocess.input_size, self.batch_size)
        return prefetcher.batches(paths)

    # -- one image to model input; preprocessed batches to predictions -------------------

    def prepare(self, image: ImageSource, out: np.ndarray | None = None) -> np.ndarray:
        """Decode and preprocess one image to the model's (3, H, W) float32 input, into
        `out` when given (a row of a batch)."""
        decoded = load_image(
            image, max_pixels=self.max_pixels, min_side=self.preprocess.decode_min_side
        )
        return preprocess_image(decoded, self.preprocess, out)

    def predict_batch(
        self, batch: np.ndarray, top_k: int = 5, min_score: float | None = None
    ) -> list[Predictions]:
        """Top-k predictions for a preprocessed (N, 3, H, W) batch (with the classifier's
        `coverage`, prediction sets)."""
        _check_min_score(min_score)
        probabilities, scores = self.predict_scored(batch)
        unknown = self.unknown(probabilities, scores, min_score)
        return self.top_predictions(probabilities, top_k, unknown, min_score)

    def prediction_sets(self, probabilities: np.ndarray, coverage: float) -> np.ndarray:
        """(N, num_classes) bool: each image's conformal prediction set at `coverage`."""
        self.check_coverage(coverage)
        return self.conformal.sets(probabilities, coverage)

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities, (N, num_classes) float64, for a preprocessed batch:
        softmax(logits / temperature), the temperature of a run (else 1); for a multi-label
        model each class's sigmoid(logit)."""
        logits = self.runtime(batch)
        return sigmoid(logits) if self.multi_label else softmax(logits / self.temperature)

    def predict_scored(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities and, when the model has a rejection rule, the score
        its threshold reads (one forward pass either way)."""
        if self.rejection is None:
            return self.predict_proba(batch), None
        if not self.rejection.needs_features:
            probabilities = self.predict_proba(batch)
            return probabilities, self.rejection.scores(probabilities, None)
        logits, features = self.runtime.logits_and_features(batch)
        probabilities = softmax(logits / self.temperature)
        return probabilities, self.rejection.scores(probabilities, features)

    def unknown(
        self, probabilities: np.ndarray, scores: np.ndarray | None, min_score: float | None = None
    ) -> np.ndarray:
        """Which images to answer "unknown": top score below `min_score` when given, else
        the model's own rule (registry models without `min_score`: none). A multi-label
        model's images are unknown when no class reaches its threshold (or `min_score`)."""
        if self.multi_label:
            return ~self.present(probabilities, min_score=min_score).any(axis=1)
        if min_score is not None:
            return probabilities.max(axis=1) < min_score
        if self.rejection is None or scores is None:
            return np.zeros(len(probabilities), bool)
        return scores < self.rejection.threshold

    def present(
        self,
        probabilities: np.ndarray,
        unknown: np.ndarray | None = None,
        min_score: float | None = None,
    ) -> np.ndarray:
        """(N, num_classes) bool: the classes the model asserts for each image. Multi-label:
        probability at or above the class's threshold (or `min_score`); single-label: the
        top-1, unless the image is `unknown`."""
        if self.multi_label:
            return probabilities >= (self.thresholds if min_score is None else min_score)
        flags = np.zeros(probabilities.shape, bool)
        flags[np.arange(len(probabilities)), probabilities.argmax(axis=1)] = True
        if unknown is not None:
            flags &= ~np.asarray(unknown, bool)[:, None]
        return flags

    def top_predictions(
        self,
        probabilities: np.ndarray,
        top_k: int = 5,
        unknown: np.ndarray | None = None,
        min_score: float | None = None,
        coverage: float | None = None,
    ) -> list[Predictions]:
        """The top-k `Prediction`s of each row of a (N, num_classes) probability array,
        with the labels the model asserts; `unknown` as `self.unknown` gives it (default:
        the model's thresholds, or `min_score`, alone). The prediction set at `coverage`
        (default: the classifier's) and the hierarchical answer when there are any."""
        check_scalar(top_k, "top_k", int, min_val=1)
        if unknown is None:
            unknown = self.unknown(probabilities, None, min_score)
        present = self.present(probabilities, unknown, min_score)
        order = np.argsort(-probabilities, axis=1, kind="stable")
        k = min(top_k, self.num_classes)
        names, ids = self.labels.names, self.labels.class_ids
        coverage = self.coverage if coverage is None else coverage
        sets = None if coverage is None else self.prediction_sets(probabilities, coverage)
        answers = (
            self.taxonomy.answers(probabilities, self.answer_confidence)
            if self.taxonomy is not None
            else [None] * len(probabilities)
        )
        return [
            Predictions(
                (
                    Prediction(names[i], ids[i], int(i), float(row[i]), bool(flag), bool(shown[i]))
                    for i in ranked[:k]
                ),
                (names[i] for i in ranked if shown[i]),
                None if sets is None else [names[i] for i in ranked if sets[n, i]],
                answers[n],
                self.taxonomy is not None,
            )
            for n, (row, ranked, flag, shown) in enumerate(
                zip(probabilities, order, unknown, present, strict=True)
            )
        ]

    def __repr__(self) -> str:
        backend, precision = self.runtime.backend, self.runtime.precision
        return (
            f"ImageClassifier({self.name!r}, classes={self.num_classes}, "
            f"backend={backend!r}, precision={precision!r})"
        )

    @property
    def precision(self) -> str:
        """The precision the model runs at: fp32, bf16 or int8."""
        return self.runtime.precision


def _as_array(thresholds: Sequence[float] | None) -> np.ndarray | None:
    return None if thresholds is None else np.asarray(thresholds, np.float64)


def _as_tuple(thresholds: np.ndarray | None) -> tuple[float, ...] | None:
    """What a bundle and the ONNX metadata keep of `_as_array`'s array."""
    return None if thresholds is None else tuple(thresholds.tolist())


def _conformal(entry: dict[str, Any] | None) -> Conformal | None:
    return None if not entry else Conformal.from_config(entry)


def _check_level(value: float | None, name: str) -> None:
    """A coverage level or answer confidence: in (0, 1]."""
    check_scalar(value, name, min_val=0.0, max_val=1.0, min_inclusive=False, allow_none=True)


def _check_min_score(min_score: float | None) -> None:
    check_scalar(min_score, "min_score", min_val=0.0, max_val=1.0, allow_none=True)


def _num_classes(module) -> int:
    num_classes = getattr(module, "num_classes", None)
    if num_classes is None:  # torchvision models keep it only in their last layer
        num_classes = module.classifier[-1].out_features
    return int(num_classes)
