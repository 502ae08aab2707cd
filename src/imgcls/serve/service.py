"""The loaded models the HTTP layers call: decode and preprocess off the event loop,
then batch through each model's `Batcher`. No HTTP here besides the errors it raises.

PyTorch is imported only where it runs (a torch backend, Grad-CAM): a server of ONNX
models never loads it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import numpy as np
from starlette.concurrency import run_in_threadpool

from imgcls.data.images import DEFAULT_MAX_PIXELS, decode_image_bytes
from imgcls.data.preprocess import preprocess_image
from imgcls.errors import (
    NotExplainable,
    Overloaded,
    RequestError,
    StartupError,
    StorageFull,
    UnknownLabel,
    UnknownModel,
)
from imgcls.explain import Explainer, Explanation
from imgcls.inference.classifier import ImageClassifier, Predictions
from imgcls.inference.runtime import HeadRuntime
from imgcls.models.registry import DEFAULT_MODEL
from imgcls.serve.batching import Batcher
from imgcls.serve.feedback import (
    DEFAULT_FEEDBACK_DIR,
    DEFAULT_FEEDBACK_MAX_MB,
    DEFAULT_LOG_MAX_ROWS,
    FeedbackStore,
    LoggedPrediction,
    PredictionLog,
    sha256_hex,
)
from imgcls.serve.log_writer import LogWriter
from imgcls.serve.metrics import Metrics
from imgcls.validation import check_scalar

__all__ = ["ServeConfig", "ServedModel", "Service"]

log = logging.getLogger("imgcls.serve")

ONNX_WORKERS = 2  # batches ONNX Runtime runs at once (see Service.load)
ONNX_MAX_BATCH = 4  # the default --max-batch of those; 16 for PyTorch (one batch at a time)
EXPLAIN_MAX_SIDE = 1024  # pixels; a heat map PNG of a 12-megapixel photo would be ~20 MB


@dataclass(frozen=True)
class ServeConfig:
    """Settings of `imgcls serve`; the first model answers requests that name none."""

    models: tuple[str, ...] = (DEFAULT_MODEL,)  # registry names or run directories
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int | None = None  # images per model call; None: by backend (see load)
    max_wait_ms: float = 0.0  # how long a batch's first image waits for company
    max_queue: int = 256  # images waiting for the model; beyond it, 503
    max_upload_mb: float = 20.0  # request body cap, MB (10^6 bytes)
    max_pixels: int = DEFAULT_MAX_PIXELS  # decoded image cap (width x height)
    device: str = "cpu"
    backend: str = "auto"  # auto (ONNX Runtime on the CPU) | torch | onnx
    threads: int | None = None  # threads per model call; None: see Service.load
    # API keys a request must carry (auth.py); kept out of repr so that no log shows them.
    # None given: `run` requires none on loopback and generates one elsewhere.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    no_auth: bool = False  # no keys even off loopback (said in the log)
    metrics_auth: bool = False  # /metrics needs a key too (by default scrapers need none)
    log_db: str | None = None  # SQLite prediction log; None: off (the CLI turns it on)
    log_queue: int = 10_000  # log rows waiting for the disk; beyond it, dropped and counted
    log_max_rows: int | None = DEFAULT_LOG_MAX_ROWS  # older rows deleted; None: all kept
    log_max_days: float | None = None  # rows older than this deleted; None: no age limit
    feedback_dir: str = DEFAULT_FEEDBACK_DIR  # corrected images, in class folders
    feedback_max_mb: float | None = DEFAULT_FEEDBACK_MAX_MB  # beyond it, 507; None: no cap

    def __post_init__(self) -> None:
        # The limits that keep the disk bounded (a 0 would mean "keep nothing").
        for name, value in (
            ("log_max_rows", self.log_max_rows),
            ("log_max_days", self.log_max_days),
            ("feedback_max_mb", self.feedback_max_mb),
        ):
            check_scalar(value, name, min_val=0, min_inclusive=False, allow_none=True)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)


@dataclass
class ServedModel:
    """One loaded classifier and the batcher in front of it."""

    classifier: ImageClassifier
    batcher: Batcher  # rows: probabilities, then the rejection score (see `scored_rows`)
    max_pixels: int
    decode_pool: Executor | None = None  # decodes and preprocesses uploads (None: asyncio's)
    on_unknown: Callable[[int], None] = lambda count: None  # counts "unknown" answers
    torch_threads: int = 1  # PyTorch's threads once Grad-CAM loads it (see Service.load)
    _explainer: Explainer | None = field(default=None, init=False, repr=False)
    _explain_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def name(self) -> str:
        return self.classifier.name

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.classifier.preprocess.input_size

    async def classify(
        self,
        files: Sequence[tuple[str, bytes]],
        top_k: int,
        min_score: float | None = None,
        coverage: float | None = None,
    ) -> list[Predictions]:
        """Top-k predictions for each (filename, encoded bytes) pair, in order, each marked
        unknown by the model's rule (or by `min_score` when given), with prediction sets
        at `coverage` when given."""
        outputs = await self._outputs(await self._prepare_all(files))
        probabilities, scores = split_outputs(outputs)
        unknown = self.classifier.unknown(probabilities, scores, min_score)
        self.on_unknown(int(unknown.sum()))
        return self.classifier.top_predictions(probabilities, top_k, unknown, min_score, coverage)

    async def explain(self, name: str, data: bytes, label: str | None) -> Explanation:
        """Grad-CAM of one encoded image for `label` (default: the top-1 class)."""
        return await run_in_threadpool(self._explain, name, data, label)

    def _explain(self, name: str, data: bytes, label: str | None) -> Explanation:
        # One at a time per model: Grad-CAM hooks the module, and each run takes a core.
        image = self._decode(name, data)  # a bad upload is refused before any model load
        with self._explain_lock:
            try:
                explainer = self._get_explainer()
                return explainer.explain(image, label, max_side=EXPLAIN_MAX_SIDE)
            except ModuleNotFoundError as exc:  # the inference-only install
                raise NotExplainable(
                    f"Grad-CAM needs PyTorch, not installed with this server ({exc}); "
                    "pip install 'imgcls[train]'"
                ) from None

    def _get_explainer(self) -> Explainer:
        """Grad-CAM for this model, built on first use: most servers never explain. The
        caller holds `_explain_lock`."""
        if self._explainer is None:
            self._explainer = Explainer(self.name, max_pixels=self.max_pixels)
            import torch  # loaded by the Explainer by now

            torch.set_num_threads(self.torch_threads)  # process-wide, as in Service.load
        return self._explainer

    def warm_explainer(self) -> None:
        """Build Grad-CAM and run it once on a blank image, so that the first heat map a
        user asks for takes a fraction of a second, not the seconds of PyTorch's import,
        the model's build and a first backward pass. Best effort: a model Grad-CAM cannot
        explain, or a server without PyTorch, is left as it is (a request then says why)."""
        if self.name.endswith(".onnx") or isinstance(self.classifier.runtime, HeadRuntime):
            return  # no gradients to explain with, and PyTorch stays unloaded
        blank = np.full((*self.input_size[1:], 3), 128, np.uint8)
        started = time.perf_counter()
        with self._explain_lock:
            try:
                self._get_explainer().explain(blank)
            except Exception as exc:  # best effort: a request for a heat map reports it
                log.info("Grad-CAM for %s not warmed: %s", self.name, exc)
                return
        log.info("Grad-CAM for %s ready (%.1f s)", self.name, time.perf_counter() - started)

    def check_label(self, label: str) -> str:
        """`label` if it is one of this model's class names (or ids, mapped to the name)."""
        labels = self.classifier.labels
        index = labels.index_of(label)
        if index is not None:
            return label if label in labels.names else labels.names[index]
        raise UnknownLabel(
            f"label {label!r} is not one of the {len(labels)} classes of {self.name}"
        )

    async def probabilities_for_images(self, files: Sequence[tuple[str, bytes]]) -> np.ndarray:
        """(N, C) probabilities for encoded images; undecodable ones raise 422."""
        return await self.probabilities(await self._prepare_all(files))

    async def probabilities(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """(N, C) probabilities for preprocessed (3, H, W) arrays, through the batcher."""
        return split_outputs(await self._outputs(arrays))[0]

    async def _prepare_all(self, files: Sequence[tuple[str, bytes]]) -> list[np.ndarray]:
        self._check_count(len(files))
        if not self.batcher.has_room(len(files)):  # refuse before spending time decoding
            raise Overloaded(f"{self.batcher.depth} images queued")
        loop = asyncio.get_running_loop()
        return await asyncio.gather(
            *(
                loop.run_in_executor(self.decode_pool, self._prepare, name, data)
                for name, data in files
            )
        )

    async def _outputs(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        self._check_count(len(arrays))
        return await self.batcher.submit(arrays)

    def _check_count(self, count: int) -> None:
        if not 1 <= count <= self.batcher.max_queue:
            raise RequestError(
                f"send 1 to {self.batcher.max_queue} images per request, got {count}"
            )

    def _prepare(self, name: str, data: bytes) -> np.ndarray:
        return preprocess_image(self._decode(name, data), self.classifier.preprocess)

    def check_image(self, name: str, data: bytes) -> None:
        """Raise ImageError unless `data` decodes as an acceptable image."""
        self._decode(name, data)

    def _decode(self, name: str, data: bytes) -> np.ndarray:
        return decode_image_bytes(
            data,
            name=name or "request body",  # a raw-body upload has no file name
            max_pixels=self.max_pixels,
            min_side=self.classifier.preprocess.resize_size,
        )


def scored_rows(classifier: ImageClassifier) -> Callable[[np.ndarray], np.ndarray]:
    """The batcher's model call: one row per image, its C probabilities and then the
    score the model's "unknown" rule reads (NaN without a rule), so that the rule's
    features come from the same forward pass."""

    def run(batch: np.ndarray) -> np.ndarray:
        probabilities, scores = classifier.predict_scored(batch)
        if scores is None:
            scores = np.full(len(probabilities), np.nan)
        return np.column_stack([probabilities, scores])

    return run


def split_outputs(outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, rejection scores) of the rows `scored_rows` makes."""
    return outputs[:, :-1], outputs[:, -1]


@dataclass
class Service:
    """The served models by name, in the order given; the first is the default."""

    config: ServeConfig
    metrics: Metrics
    models: dict[str, ServedModel] = field(default_factory=dict)
    log: PredictionLog | None = None  # open while the service runs, when logging is on
    log_writer: LogWriter | None = None  # writes `log`'s prediction rows, off the request path
    feedback: FeedbackStore = field(init=False)  # corrected images, under their size cap
    _warm_up: asyncio.Task | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        cap = self.config.feedback_max_mb
        self.feedback = FeedbackStore(
            self.config.feedback_dir, max_bytes=None if cap is None else int(cap * 1_000_000)
        )

    @property
    def ready(self) -> bool:
        return bool(self.models)

    def get(self, name: str | None) -> ServedModel:
        """The model called `name` (the default for None); 404 for an unknown name."""
        if name is None:
            return next(iter(self.models.values()))
        model = self.models.get(name)
        if model is None:
            raise UnknownModel(f"no model named {name!r}; served: {', '.join(self.models)}")
        return model

    async def load(self, stack: AsyncExitStack) -> None:
        """Load every configured model and start its batcher (stopped when `stack` closes)."""
        # ONNX Runtime runs two small batches at once, so that neither waits at an
        # intra-op barrier for a thread a decoding request preempted; torch runs one and
        # leaves a core to the decoding (both measured: docs/performance.md).
        cores = len(os.sched_getaffinity(0))
        threads = self.config.threads or max(1, cores - 1)
        # Uploads decode in a pool of their own, one thread per core (docs/performance.md).
        decode_pool = ThreadPoolExecutor(cores, thread_name_prefix="imgcls-decode")
        stack.callback(decode_pool.shutdown)
        for spec in self.config.models:
            classifier = await run_in_threadpool(
                ImageClassifier,
                spec,
                device=self.config.device,
                backend=self.config.backend,
                max_pixels=self.config.max_pixels,
                threads=threads,
            )
            name = classifier.name
            if name in self.models:
                raise ValueError(f"two models are both called {name!r}; serve each once")
            onnx = classifier.runtime.backend == "onnx"
            batcher = Batcher(
                scored_rows(classifier),
                max_batch=self.config.max_batch or (ONNX_MAX_BATCH if onnx else 16),
                max_wait_ms=self.config.max_wait_ms,
                max_queue=self.config.max_queue,
                on_batch=self._observer(name, classifier.labels.names),
                name=name,
                workers=ONNX_WORKERS if onnx else 1,
            )
            await stack.enter_async_context(batcher)
            self.metrics.track_queue(name, lambda b=batcher: b.depth)
            self.models[name] = ServedModel(
                classifier,
                batcher,
                self.config.max_pixels,
                decode_pool,
                on_unknown=lambda count, n=name: self.metrics.count_unknown(n, count),
                torch_threads=threads,
            )
        torch = sys.modules.get("torch")  # loaded by a torch backend (or by this process)
        if torch is not None:  # process-wide; restored on exit
            stack.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(threads)
        stack.push_async_callback(self._finish_warm_up)
        await run_in_threadpool(lambda: self.feedback.used_bytes)  # counted once, off the loop
        self.metrics.feedback_bytes.set_function(lambda: self.feedback.used_bytes)
        if self.config.log_db is not None:  # opened once the models load: no file on failure
            try:
                self.log = PredictionLog(self.config.log_db)
            except (OSError, sqlite3.Error) as exc:  # a read-only or missing directory
                raise StartupError(
                    f"{self.config.log_db}: cannot open the prediction log ({exc}); give "
                    "another --log-db, or --no-log"
                ) from None
            stack.callback(self.log.close)
            self.log_writer = LogWriter(
                self.log,
                max_queue=self.config.log_queue,
                max_rows=self.config.log_max_rows,
                max_age_days=self.config.log_max_days,
                on_dropped=self.metrics.log_dropped.inc,
                on_write_error=self.metrics.log_write_errors.inc,
                on_deleted=self.metrics.log_deleted.inc,
            )
            self.metrics.log_queue_depth.set_function(lambda: self.log_writer.depth)
            # Closed before the log: the rows still queued are written first.
            stack.push_async_callback(run_in_threadpool, self.log_writer.close)

    def warm_explainer(self) -> None:
        """Start warming Grad-CAM for the default model in the background, once (the web
        page calls this when it is served: the page shows heat maps, API clients may never
        ask for one, and PyTorch costs about 1 GB of memory)."""
        if self._warm_up is None and self.ready:
            model = self.get(None)
            self._warm_up = asyncio.create_task(run_in_threadpool(model.warm_explainer))

    async def _finish_warm_up(self) -> None:
        if self._warm_up is not None:  # a thread cannot be stopped: let it end first
            await self._warm_up

    def _observer(self, name: str, labels: Sequence[str]) -> Callable[[np.ndarray], None]:
        return lambda outputs: self.metrics.observe_batch(name, labels, split_outputs(outputs)[0])

    async def classify_and_log(
        self,
        model: ServedModel,
        files: Sequence[tuple[str, bytes]],
        top_k: int,
        min_score: float | None = None,
        coverage: float | None = None,
    ) -> list[Predictions]:
        """`model.classify`, each image's top-1 then queued for the prediction log."""
        start = time.perf_counter()
        predictions = await model.classify(
            files, top_k=top_k, min_score=min_score, coverage=coverage
        )
        if self.log_writer is not None:
            latency_ms = (time.perf_counter() - start) * 1000
            # Hashed here, on the event loop: about 0.7 ms per MB, less than a thread
            # hand-off for a photo, and the queue then holds hashes, not uploads.
            self.log_writer.put(
                [
                    LoggedPrediction(
                        model.name,
                        sha256_hex(data),
                        name,
                        top[0].label,
                        top[0].class_id,
                        top[0].score,
                        latency_ms,
                    )
                    for (name, data), top in zip(files, predictions, strict=True)
                ]
            )
        return predictions

    async def add_feedback(self, model: ServedModel, name: str, data: bytes, label: str) -> dict:
        """Keep a corrected label for an image: the file under the feedback directory, a
        row in the log. 422 for a label the model does not know or a file that is not an
        image; 507 when the directory is at its cap or the disk refuses the file."""
        label = model.check_label(label)
        await run_in_threadpool(model.check_image, name, data)
        try:
            path = await run_in_threadpool(self.feedback.add, data, name, label)
        except ValueError as exc:
            raise UnknownLabel(str(exc)) from None
        except StorageFull as exc:
            self.metrics.feedback_refused.inc()
            raise StorageFull(
                f"correction not stored: {exc} (the server's --feedback-max-mb); "
                "export the corrections (imgcls feedback export) and clear the folder"
            ) from None
        except OSError as exc:  # disk full, read-only: said to the client, not a 500
            self.metrics.feedback_refused.inc()
            raise StorageFull(
                f"correction not stored: the server could not write it ({exc.strerror or exc})"
            ) from None
        digest = path.stem
        relative = path.relative_to(self.feedback.root).as_posix()
        if self.log_writer is not None:
            await run_in_threadpool(
                self.log_writer.record_feedback, model.name, digest, label, relative
            )
        return {"model": model.name, "sha256": digest, "label": label, "path": relative}
