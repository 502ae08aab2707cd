"""imgcls on Ray Data: batch prediction, features and evaluation beyond one machine.

    import ray
    import imgcls.ray

    ds = ray.data.read_binary_files("s3://bucket/photos/", include_paths=True)
    predictions = ds.map_batches(
        imgcls.ray.Predictor,
        fn_constructor_kwargs={"model": imgcls.ray.bundle("runs/exp1"), "top_k": 5},
        **imgcls.ray.map_options(),
    )
    predictions.write_parquet("s3://bucket/predictions/")

`Predictor` and `Featurizer` are callable classes: Ray Data runs a pool of actors, each of
which loads the model once and then classifies batch after batch. A batch has a `path`
column and, from `read_binary_files(..., include_paths=True)`, a `bytes` column; without
one, the actor reads the paths itself. Decoding, preprocessing and the model are those of
`ImageClassifier.classify_paths`, the code `imgcls predict DIR` runs, so a file that does
not decode becomes a row with an `error`, never a failed job.

The model travels as a `ModelBundle`: `bundle()` loads it once, here, from the export
cache (exporting it on first use) and the bundle, the ONNX file's bytes and all, goes to
the actors through Ray's object store — the nodes need neither PyTorch nor the run
directory, and nothing is exported twice. A model name or run directory given as a string
is loaded by each actor from its own node's export cache instead.

`RayClassifier` is the same for the command line (`imgcls predict|features|evaluate
--ray`): an `ImageClassifier`'s file methods, answered by the actors. How actors are sized
(and why reading must keep some CPU): `map_options`; measurements: docs/scale.md.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data

from imgcls.data.images import DEFAULT_MAX_PIXELS, EncodedImage
from imgcls.data.sources import is_uri, list_uri
from imgcls.errors import ConfigError, ImageError
from imgcls.inference.classifier import File, ImageClassifier, ModelBundle, Prediction, Predictions
from imgcls.models.registry import DEFAULT_MODEL
from imgcls.results import arrow_answer, arrow_error, arrow_prediction, error_fields
from imgcls.trust.hierarchy import Answer
from imgcls.validation import check_scalar

__all__ = [
    "Featurizer",
    "Predictor",
    "RayClassifier",
    "bundle",
    "list_uri",
    "map_options",
    "session",
]

BATCH_SIZE = 64  # files per actor call: enough to keep the model's batches of 8 full
# One ONNX Runtime thread per CPU actor, one actor per core: separate sessions and decoding
# pools overlap better than two threads share a batch (docs/scale.md).
THREADS_PER_ACTOR = 1
# An actor claims half a CPU less than it runs, so that Ray can still schedule the read
# tasks (1 CPU each, mostly waiting on storage); claiming every CPU stalled jobs on 2 cores.
LEFT_FOR_READS = 0.5
READ_CPUS = 0.25  # what our own read tasks claim (RayClassifier, for URIs)

# The failures that leave the other files running (imgcls.data.prefetch): a row's error.
_FAILURES = {kind.__name__: kind for kind in (FileNotFoundError, ImageError)}

# What the actors return: the fields of `Prediction` and a failure's `error` (null when
# none) as `imgcls predict --output` writes them.
PREDICTION, ERROR = arrow_prediction(), arrow_error()
PREDICTIONS = pa.schema(
    [("path", pa.string())]
    + [(field.name, field.type) for field in PREDICTION]
    + [("top_k", pa.list_(PREDICTION)), ("labels", pa.list_(pa.string()))]
    + [("prediction_set", pa.list_(pa.string())), ("answer", arrow_answer()), ("error", ERROR)]
)
FEATURES = pa.schema(
    [("path", pa.string()), ("features", pa.list_(pa.float32())), ("error", ERROR)]
)
SCORES = pa.schema(
    [
        ("path", pa.string()),
        ("probabilities", pa.list_(pa.float64())),
        ("score", pa.float64()),
        ("error", ERROR),
    ]
)


def bundle(
    model: str = DEFAULT_MODEL,
    *,
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
) -> ModelBundle:
    """Load `model` (a name, run directory or `.onnx` file) here, once, on ONNX Runtime,
    as a `ModelBundle` to hand the actors (`fn_constructor_kwargs={"model": ...}`)."""
    classifier = ImageClassifier(
        model, weights=weights, pretrained=pretrained, backend="onnx", threads=1
    )
    return classifier.bundle()


def map_options(
    *, num_gpus: float = 0, batch_size: int = BATCH_SIZE, actors: int | None = None
) -> dict[str, Any]:
    """Keyword arguments for `Dataset.map_batches(Predictor | Featurizer, ...)`: a fixed
    pool of actors that fills the cluster Ray is connected to.

    On CPUs, an actor per THREADS_PER_ACTOR cores, each claiming LEFT_FOR_READS less (see
    there why); `num_gpus` per actor on GPUs (1: one actor per GPU, which then runs
    ONNX Runtime's CUDA provider). `actors` fixes the pool's size instead."""
    resources = ray.cluster_resources()
    if num_gpus:  # ONNX Runtime's CPU side takes a thread; decoding as on CPU actors
        size = actors or max(1, int(resources.get("GPU", 0) // num_gpus))
        num_cpus = 1 - LEFT_FOR_READS
    else:
        size = actors or max(1, int(resources.get("CPU", 1) // THREADS_PER_ACTOR))
        num_cpus = THREADS_PER_ACTOR - LEFT_FOR_READS
    return {
        "compute": ray.data.ActorPoolStrategy(size=size),
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "batch_size": batch_size,
    }


class _ModelActor:
    """What the actors share: the model, loaded once per actor on the CPU cores it was
    given (or its GPU), and a batch's files."""

    def __init__(
        self,
        model: ModelBundle | str | ray.ObjectRef = DEFAULT_MODEL,
        *,
        batch_size: int = 8,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        threads: int | None = None,
    ) -> None:
        if isinstance(model, ray.ObjectRef):
            model = ray.get(model)
        if not isinstance(model, ModelBundle):  # this node's export cache: see the module
            model = ImageClassifier(model, backend="onnx", threads=1).bundle()
        self.classifier = ImageClassifier(
            model,
            threads=threads or _assigned_threads(),
            device=_assigned_device(),
            batch_size=batch_size,
            max_pixels=max_pixels,
        )

    @staticmethod
    def files(batch: Mapping[str, Any]) -> list[File]:
        """The batch's files: paths, or their bytes when the batch has them."""
        if "path" not in batch:
            raise ConfigError(
                f"imgcls.ray: a batch needs a `path` column (and `bytes`, as "
                f"read_binary_files(..., include_paths=True) gives); got {list(batch)}"
            )
        paths = [str(path) for path in batch["path"]]
        if "bytes" not in batch:
            return paths
        return [EncodedImage(p, bytes(b)) for p, b in zip(paths, batch["bytes"], strict=True)]


class Predictor(_ModelActor):
    """`map_batches` callable: top-k predictions per file.

    Columns out: `path`; the top-1's `label`, `class_id`, `index`, `score`, `unknown` and
    `present`; `top_k`, the list of predictions (each with those fields); `labels`, the
    classes the model asserts; `prediction_set` (with `coverage`) and `answer` (a model
    with a taxonomy), else null; `error` (`type`, `message`) for a file that did not
    decode, whose other columns are null."""

    def __init__(
        self,
        model: ModelBundle | str | ray.ObjectRef = DEFAULT_MODEL,
        *,
        top_k: int = 5,
        min_score: float | None = None,
        coverage: float | None = None,
        answer_confidence: float | None = None,
        **options: Any,
    ) -> None:
        check_scalar(top_k, "top_k", int, min_val=1)
        super().__init__(model, **options)
        self.top_k, self.min_score = top_k, min_score
        self.classifier.check_coverage(coverage)
        self.classifier.coverage = coverage
        if answer_confidence is not None:
            self.classifier.answer_confidence = answer_confidence

    def __call__(self, batch: Mapping[str, Any]) -> pa.Table:
        outcomes = self.classifier.classify_paths(self.files(batch), self.top_k, self.min_score)
        return _table(outcomes, _prediction_columns, PREDICTIONS)


class Featurizer(_ModelActor):
    """`map_batches` callable: the pooled penultimate features of each file.

    Columns out: `path`, `features` (a list of float32; null for a file that did not
    decode) and `error`."""

    def __call__(self, batch: Mapping[str, Any]) -> pa.Table:
        outcomes = self.classifier.features_paths(self.files(batch))
        return _table(outcomes, lambda features: {"features": features}, FEATURES)


class _Scorer(_ModelActor):
    """`map_batches` callable for evaluation: every class's probability and the rejection
    score of each file (`ImageClassifier.scored_paths`)."""

    def __call__(self, batch: Mapping[str, Any]) -> pa.Table:
        outcomes = self.classifier.scored_paths(self.files(batch))
        return _table(outcomes, lambda o: {"probabilities": o[0], "score": o[1]}, SCORES)


def _table(
    outcomes: Iterable[tuple[str, Any]], columns: Callable[[Any], dict], schema: pa.Schema
) -> pa.Table:
    """A batch's rows: `columns` of each file's outcome, or its `error`."""
    rows = [
        {"path": path, "error": error_fields(outcome)}
        if isinstance(outcome, Exception)
        else {"path": path, **columns(outcome)}
        for path, outcome in outcomes
    ]
    return pa.Table.from_pylist(rows, schema=schema)


def _prediction_columns(predictions: Predictions) -> dict[str, Any]:
    ranked = [p.to_dict() for p in predictions]
    answer = predictions.answer
    return {
        **ranked[0],
        "top_k": ranked,
        "labels": list(predictions.labels),
        "prediction_set": predictions.prediction_set,
        "answer": None if answer is None else answer.to_dict(),
    }


def _failure(error: Mapping[str, str]) -> Exception:
    """The exception a row's `error` describes, back as the type it was raised as."""
    return _FAILURES.get(error["type"], RuntimeError)(error["message"])


class RayClassifier:
    """An `ImageClassifier`'s file methods — `classify_paths`, `features_paths`,
    `scored_paths` — answered by a pool of Ray actors: the same arguments, the same
    (path, outcome) pairs in the same order, failures in place.

    Files are local paths (every node must see them at the same path: a shared file
    system, or this machine for a local Ray; each actor reads its own) or URIs Ray reads
    (`s3://`, `gs://`, ..., read by Ray's read tasks). The classifier is shipped once, as
    a `ModelBundle`. The actors are those of `map_options`, on the GPUs when the cluster
    has some (`num_gpus` per actor, default 1), else on the CPUs. Ray must be running
    (`session`)."""

    def __init__(
        self,
        classifier: ImageClassifier,
        *,
        batch_size: int = BATCH_SIZE,
        num_gpus: float | None = None,
        actors: int | None = None,
    ) -> None:
        self.bundle = classifier.bundle()
        self.actor_options = {
            "batch_size": classifier.batch_size,
            "max_pixels": classifier.max_pixels,
        }
        # What the Predictor actors add: the classifier's sets and answers.
        self.sets = {
            "coverage": classifier.coverage,
            "answer_confidence": classifier.answer_confidence,
        }
        self.hierarchical = classifier.taxonomy is not None
        if num_gpus is None:
            num_gpus = 1 if ray.cluster_resources().get("GPU") else 0
        self.map_options = map_options(num_gpus=num_gpus, batch_size=batch_size, actors=actors)

    def classify_paths(
        self, paths: Iterable[str], top_k: int = 5, min_score: float | None = None
    ) -> Iterator[tuple[str, Predictions | Exception]]:
        hierarchical = self.hierarchical

        def predictions(row: dict[str, Any]) -> Predictions:
            answer = row["answer"]
            return Predictions(
                [Prediction(**p) for p in row["top_k"]],
                row["labels"],
                row["prediction_set"],
                None if answer is None else Answer(**{**answer, "path": tuple(answer["path"])}),
                hierarchical,
            )

        return self._outcomes(
            Predictor, paths, predictions, top_k=top_k, min_score=min_score, **self.sets
        )

    def features_paths(self, paths: Iterable[str]) -> Iterator[tuple[str, np.ndarray | Exception]]:
        return self._outcomes(
            Featurizer, paths, lambda row: np.asarray(row["features"], np.float32)
        )

    def scored_paths(
        self, paths: Iterable[str]
    ) -> Iterator[tuple[str, tuple[np.ndarray, float] | Exception]]:
        def scored(row: dict[str, Any]) -> tuple[np.ndarray, float]:
            return np.asarray(row["probabilities"], np.float64), row["score"]

        return self._outcomes(_Scorer, paths, scored)

    def _outcomes(
        self,
        actor: type[_ModelActor],
        paths: Iterable[str],
        outcome: Callable[[dict[str, Any]], Any],
        **kwargs: Any,
    ) -> Iterator[tuple[str, Any]]:
        """(path as given, the `outcome` of its row) in the order given; a failure, as the
        exception it was, in place of a row."""
        paths = [str(path) for path in paths]
        if not paths:
            return
        dataset, names = _dataset(paths)
        results = dataset.map_batches(
            actor,
            fn_constructor_kwargs={"model": self.bundle, **self.actor_options, **kwargs},
            **self.map_options,
        )
        results.context.execution_options.preserve_order = True  # the order given
        results.context.enable_progress_bars = False  # the caller shows its own
        for table in results.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in table.to_pylist():
                name = names.get(row["path"], row["path"])
                yield name, _failure(row["error"]) if row["error"] else outcome(row)


def _dataset(paths: list[str]) -> tuple[ray.data.Dataset, dict[str, str]]:
    """The files as a Ray dataset, and the name of each path Ray gives back (object
    storage keys come back without their scheme) where it is not the same."""
    if not any(is_uri(path) for path in paths):  # the actors read the files
        return ray.data.from_items([{"path": path} for path in paths]), {}
    from pyarrow.fs import FileSystem

    names = {}
    for path in paths:
        if is_uri(path):
            names[FileSystem.from_uri(path)[1]] = path
    dataset = ray.data.read_binary_files(paths, include_paths=True, num_cpus=READ_CPUS)
    return dataset, names


def _restore_environment(saved: dict[str, str]) -> None:
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    os.environ.update(saved)


def _assigned_threads() -> int | None:
    """Cores this actor was given, rounded up (None outside Ray: all of this process's)."""
    if not ray.is_initialized():
        return None
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
    return max(1, math.ceil(cpus)) if cpus else None


def _assigned_device() -> str:
    """ "cuda" in an actor given a GPU whose ONNX Runtime can use it, else "cpu"."""
    if not (ray.is_initialized() and ray.get_gpu_ids()):
        return "cpu"
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return "cuda"  # Ray makes the actor's GPU the only one it sees: device 0
    warnings.warn(
        "imgcls.ray: this actor has a GPU but onnxruntime has no CUDA execution provider "
        "(install onnxruntime-gpu on the GPU nodes); running on the CPU",
        RuntimeWarning,
        stacklevel=2,
    )
    return "cpu"


@contextlib.contextmanager
def session(address: str | None = None) -> Iterator[None]:
    """Ray for the duration of a block: joins the cluster at `address` ("auto", a head's
    "HOST:6379", "ray://HOST:10001"), or with None or "local" starts a local Ray on the
    cores of this machine — quietly (no dashboard, workers' logs in their files) — and
    shuts down what it started. A Ray already running in this process is used as it is."""
    if ray.is_initialized():
        yield
        return
    # ray.init sets process-wide variables (PYTHONBREAKPOINT, RAY_AUTH_MODE, ...)
    # that every later subprocess of this process would inherit; put them back after.
    environment = dict(os.environ)
    quiet: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR,
    }
    try:
        try:
            if address in (None, "local"):
                ray.init(address="local", num_cpus=len(os.sched_getaffinity(0)), **quiet)
            else:
                ray.init(address=address, **quiet)
        except ConnectionError as exc:
            raise ConfigError(
                f"`address` {address!r}: no Ray cluster to join there ({exc})",
                parameters=("address",),
            ) from None
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # per-dataset plans and tips
        try:
            yield
        finally:
            ray.shutdown()
    finally:
        _restore_environment(environment)
