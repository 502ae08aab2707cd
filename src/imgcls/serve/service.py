"""The loaded models the HTTP layers call: decode and preprocess off the event loop,
then batch through each model's `Batcher`. No HTTP here besides the errors it raises.

PyTorch is imported only where it runs (a torch backend, Grad-CAM): a server of ONNX
models never loads it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from starlette.concurrency import run_in_threadpool

from imgcls.data.images import DEFAULT_MAX_PIXELS, declared_pixels, decode_image_bytes
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
from imgcls.serve.budget import DecodeBudget
from imgcls.serve.compare import Comparison
from imgcls.serve.feedback import (
    DEFAULT_FEEDBACK_DIR,
    DEFAULT_FEEDBACK_MAX_MB,
    DEFAULT_LOG_MAX_ROWS,
    FeedbackStore,
    LoggedPrediction,
    PredictionLog,
    sha256_hex,
)
from imgcls.serve.inflight import InFlight
from imgcls.serve.keep import DEFAULT_KEEP_DIR, KeptSample
from imgcls.serve.log_writer import LogWriter
from imgcls.serve.metrics import Metrics
from imgcls.serve.postgres_log import PostgresLog, is_postgres_url
from imgcls.serve.repository import RepositoryModel, scan_repository
from imgcls.validation import check_scalar

__all__ = ["ServeConfig", "ServedModel", "Service", "open_prediction_log"]

log = logging.getLogger("imgcls.serve")

ONNX_WORKERS = 2  # batches ONNX Runtime runs at once in a server of one process (Service.load)
ONNX_MAX_BATCH = 4  # the default --max-batch of those; 16 for PyTorch (one batch at a time)
EXPLAIN_MAX_SIDE = 1024  # pixels; a heat map PNG of a 12-megapixel photo would be ~20 MB


@dataclass(frozen=True)
class ServeConfig:
    """Settings of `imgcls serve`; the first model answers requests that name none."""

    models: tuple[str, ...] = (DEFAULT_MODEL,)  # registry names or run directories
    model_repository: str | None = None  # DIR/<name>/<version>/ (repository.py); then not `models`
    poll_repository_s: float | None = None  # rescan the repository this often; None: on SIGHUP
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int | None = None  # images per model call; None: by backend (see load)
    max_wait_ms: float = 0.0  # how long a batch's first image waits for company
    max_queue: int = 256  # images waiting for the model; beyond it, 503
    max_upload_mb: float = 20.0  # request body cap, MB (10^6 bytes)
    # How long a client may take (seconds); beyond it the connection closes (or 408).
    header_timeout_s: float = 10.0  # from connecting (or a request's first byte) to its headers
    max_header_bytes: int = 64 * 1024  # request line and headers; beyond it, 431
    body_idle_timeout_s: float = 10.0  # between two chunks of a body
    body_timeout_s: float = 60.0  # for the whole body (20 MB at 2.7 Mbit/s)
    keep_alive_s: float = 5.0  # an idle keep-alive connection
    drain_s: float = 5.0  # after SIGTERM: readiness 503, still serving (lifecycle.py)
    graceful_timeout_s: float = 30.0  # after SIGTERM: the process has ended by then
    max_pixels: int = DEFAULT_MAX_PIXELS  # decoded image cap (width x height)
    decode_budget_pixels: int = DEFAULT_MAX_PIXELS  # pixels decoded at once, server-wide
    device: str = "cpu"
    backend: str = "auto"  # auto (an export on the CPU) | torch | onnx | openvino
    precision: str = "auto"  # auto | fp32 | bf16 | int8 (imgcls.inference.precision)
    threads: int | None = None  # threads per model call; None: see Service.load
    workers: int | None = None  # processes (serve/workers.py); None: by device
    # API keys a request must carry (auth.py); kept out of repr so that no log shows them.
    # None given: `run` requires none on loopback and generates one elsewhere.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    no_auth: bool = False  # no keys even off loopback (said in the log)
    metrics_auth: bool = False  # /metrics needs a key too (by default scrapers need none)
    # The prediction log: a SQLite file or a postgresql:// URL; None: off (the CLI turns
    # it on).
    log_db: str | None = None
    log_queue: int = 10_000  # log rows waiting for the disk; beyond it, dropped and counted
    log_max_rows: int | None = DEFAULT_LOG_MAX_ROWS  # older rows deleted; None: all kept
    log_max_days: float | None = None  # rows older than this deleted; None: no age limit
    feedback_dir: str = DEFAULT_FEEDBACK_DIR  # corrected images, in class folders
    feedback_max_mb: float | None = DEFAULT_FEEDBACK_MAX_MB  # beyond it, 507; None: no cap
    index: str | None = None  # an `imgcls index` folder for /v1/similar; None: no search
    keep_images_mb: float | None = None  # served images kept for labelling; None: none
    keep_dir: str = DEFAULT_KEEP_DIR  # where (serve/keep.py)
    label_queue: str | None = None  # a label file of images to label on the page

    def __post_init__(self) -> None:
        # The limits that keep the disk bounded (a 0 would mean "keep nothing").
        check_scalar(self.workers, "workers", int, min_val=1, allow_none=True)
        for name, value in (
            ("log_max_rows", self.log_max_rows),
            ("log_max_days", self.log_max_days),
            ("feedback_max_mb", self.feedback_max_mb),
            ("keep_images_mb", self.keep_images_mb),
        ):
            check_scalar(value, name, min_val=0, min_inclusive=False, allow_none=True)
        for name in ("header_timeout_s", "body_idle_timeout_s", "body_timeout_s", "keep_alive_s"):
            check_scalar(getattr(self, name), name, min_val=0, min_inclusive=False)
        check_scalar(self.drain_s, "drain_s", min_val=0)
        check_scalar(self.graceful_timeout_s, "graceful_timeout_s", min_val=self.drain_s)

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
    in_flight: InFlight = field(default_factory=InFlight)  # the server's images in flight
    # Pixels decoded at once, shared by every model's decoding (budget.py).
    budget: DecodeBudget = field(default_factory=lambda: DecodeBudget(DEFAULT_MAX_PIXELS))
    on_unknown: Callable[[int], None] = lambda count: None  # counts "unknown" answers
    torch_threads: int = 1  # PyTorch's threads once Grad-CAM loads it (see Service.load)
    served_name: str | None = None  # the repository's name for it (None: the classifier's)
    version: str = "1"  # its version in the repository
    retired: bool = field(default=False, init=False)  # a newer version took over (swap)
    active: int = field(default=0, init=False)  # requests using it now
    _explainer: Explainer | None = field(default=None, init=False, repr=False)
    _explain_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def name(self) -> str:
        return self.served_name or self.classifier.name

    @property
    def logged_name(self) -> str:
        """The name the prediction log records: `name:version` for a repository's model."""
        return self.name if self.served_name is None else f"{self.name}:{self.version}"

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
        with self.in_flight.holding(len(files)):
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
        with self.in_flight.holding(len(files)):
            return split_outputs(await self._outputs(await self._prepare_all(files)))[0]

    async def probabilities(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """(N, C) probabilities for preprocessed (3, H, W) arrays, through the batcher."""
        with self.in_flight.holding(len(arrays)):
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
        # The image and its model input are both alive until this returns.
        with self.budget.hold(declared_pixels(data) or self.max_pixels):
            return preprocess_image(self._decode(name, data), self.classifier.preprocess)

    def check_image(self, name: str, data: bytes) -> None:
        """Raise ImageError unless `data` decodes as an acceptable image."""
        self._decode(name, data)

    def _decode(self, name: str, data: bytes) -> np.ndarray:
        return decode_image_bytes(
            data,
            name=name or "request body",  # a raw-body upload has no file name
            max_pixels=self.max_pixels,
            min_side=self.classifier.preprocess.decode_min_side,
        )


def open_prediction_log(path: str) -> PredictionLog:
    """The prediction log at `path` (made if new), or StartupError saying why not."""
    try:
        return PredictionLog(path)
    except (OSError, sqlite3.Error) as exc:  # a read-only or missing directory
        raise StartupError(
            f"{path}: cannot open the prediction log ({exc}); give another --log-db, or --no-log"
        ) from None


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


def _margin(top: Predictions) -> float:
    """Top-1 minus top-2 score; with one prediction shown, the least it can be."""
    second = top[1].score if len(top) > 1 else 1.0 - top[0].score
    return top[0].score - second


def split_outputs(outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, rejection scores) of the rows `scored_rows` makes."""
    return outputs[:, :-1], outputs[:, -1]


@dataclass
class Service:
    """The served models by name, in the order given; the first is the default."""

    config: ServeConfig
    metrics: Metrics
    in_flight: InFlight = field(default_factory=InFlight)  # of this process among the workers
    models: dict[str, ServedModel] = field(default_factory=dict)
    log: PredictionLog | PostgresLog | None = None  # open while serving, when logging is on
    log_writer: LogWriter | None = None  # writes `log`'s prediction rows, off the request path
    feedback: FeedbackStore = field(init=False)  # corrected images, under their size cap
    kept: KeptSample | None = None  # served images worth labelling (--keep-images-mb)
    draining: bool = field(default=False, init=False)  # after SIGTERM: not ready, ending
    # The model repository (repository.py): what the last scan found, versions pinned
    # through the API, models unloaded through it, versions that failed to load and why.
    repository: dict[str, RepositoryModel] = field(default_factory=dict, init=False)
    pins: dict[str, int] = field(default_factory=dict, init=False)
    unloaded: set[str] = field(default_factory=set, init=False)
    refused: dict[tuple[str, str], str] = field(default_factory=dict, init=False)
    shadows: dict[str, ServedModel] = field(default_factory=dict, init=False)
    comparisons: dict[str, Comparison] = field(default_factory=dict, init=False)
    _rescan_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)
    _tasks: set[asyncio.Task] = field(default_factory=set, init=False, repr=False)
    _threads: int = field(default=1, init=False, repr=False)
    _alone_threads: int = field(default=1, init=False, repr=False)
    _processes: int = field(default=1, init=False, repr=False)
    _decode_pool: Executor | None = field(default=None, init=False, repr=False)
    _budget: DecodeBudget = field(
        default_factory=lambda: DecodeBudget(DEFAULT_MAX_PIXELS), init=False, repr=False
    )
    _warm_up: asyncio.Task | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        cap = self.config.feedback_max_mb
        self.feedback = FeedbackStore(
            self.config.feedback_dir, max_bytes=None if cap is None else int(cap * 1_000_000)
        )

    @property
    def loaded(self) -> bool:
        """Whether the models are loaded (liveness: /healthz)."""
        return bool(self.models)

    @property
    def ready(self) -> bool:
        """Whether to send traffic here (readiness): loaded, and not draining."""
        return self.loaded and not self.draining

    def start_drain(self) -> None:
        """Called on SIGTERM: readiness answers 503 from now on (lifecycle.py)."""
        self.draining = True

    def rescan_soon(self) -> None:
        """Called on SIGHUP: rescan the model repository, in the background."""
        if self.config.model_repository is None:
            log.info("SIGHUP: no --model-repository to rescan; nothing to do")
            return
        log.info("SIGHUP: rescanning %s", self.config.model_repository)
        task = asyncio.create_task(self.rescan())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def get(self, name: str | None, version: str | None = None) -> ServedModel:
        """The live model called `name` (the default for None); with `version`, only if
        that is the live one. 404 for an unknown name or a version not loaded."""
        if name is None:
            model = next(iter(self.models.values()), None)
            if model is None:
                raise UnknownModel("no model is loaded (all unloaded through the repository API)")
        else:
            model = self.models.get(name)
            if model is None:
                raise UnknownModel(
                    f"no model named {name!r}; served: {', '.join(self.models) or 'none'}"
                )
        if version is not None and version != model.version:
            raise UnknownModel(
                f"version {version!r} of {model.name!r} is not loaded (live: {model.version})"
            )
        return model

    @asynccontextmanager
    async def using(self, model: ServedModel, pinned: bool = False) -> AsyncIterator[ServedModel]:
        """`model`, or the version that replaced it since the request looked it up (unless
        the request asked for that version), held while the request uses it: a swapped-out
        version is released only once no request holds it."""
        if model.retired:
            if pinned:
                raise UnknownModel(f"version {model.version} of {model.name!r} was unloaded")
            model = self.get(model.name)
        model.active += 1
        try:
            yield model
        finally:
            model.active -= 1

    async def load(self, stack: AsyncExitStack) -> None:
        """Load every configured model and start its batcher (stopped when `stack` closes)."""
        # In one process, ONNX Runtime runs two small batches at once, so that neither
        # waits at an intra-op barrier for a thread a decoding request preempted; torch
        # runs one and leaves a core to the decoding. With worker processes, the processes
        # run in parallel: each runs one batch at a time on its share of the cores. A batch
        # with nothing beside it runs on every core (all measured: docs/performance.md).
        cores = len(os.sched_getaffinity(0))
        processes = self.config.workers or 1
        if processes > 1:
            threads = self.config.threads or max(1, cores // processes)
        else:
            threads = self.config.threads or max(1, cores - 1)
        alone_threads = self.config.threads or cores
        # Uploads decode in a pool of their own, one thread per core (docs/performance.md).
        decode_pool = ThreadPoolExecutor(cores, thread_name_prefix="imgcls-decode")
        stack.callback(decode_pool.shutdown)
        self._threads, self._decode_pool = threads, decode_pool
        self._alone_threads, self._processes = alone_threads, processes
        self._budget = DecodeBudget(self.config.decode_budget_pixels)
        stack.push_async_callback(self._stop_all)
        if self.config.model_repository is not None:
            await self.rescan()
            if not self.models:
                raise StartupError(
                    f"--model-repository {self.config.model_repository}: no model loaded "
                    "(see the log above for each version's problem)"
                )
            if self.config.poll_repository_s:
                poller = asyncio.create_task(self._poll(self.config.poll_repository_s))
                stack.callback(poller.cancel)
        for spec in self.config.models if self.config.model_repository is None else ():
            served = await self._load_model(spec)
            if served.name in self.models:
                await served.batcher.stop()
                raise ValueError(f"two models are both called {served.name!r}; serve each once")
            self.models[served.name] = served
        torch = sys.modules.get("torch")  # loaded by a torch backend (or by this process)
        if torch is not None:  # process-wide; restored on exit
            stack.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(threads)
        stack.push_async_callback(self._finish_warm_up)
        await run_in_threadpool(lambda: self.feedback.used_bytes)  # counted once, off the loop
        self.metrics.watch(self.metrics.feedback_bytes, lambda: self.feedback.used_bytes)
        if self.config.log_db is not None and is_postgres_url(self.config.log_db):
            self.log = await run_in_threadpool(PostgresLog, self.config.log_db)
        elif self.config.log_db is not None:  # opened once the models load: no file on failure
            self.log = open_prediction_log(self.config.log_db)
        if self.log is not None:
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
            self.metrics.watch(self.metrics.log_queue_depth, lambda: self.log_writer.depth)
            # Closed before the log: the rows still queued are written first.
            stack.push_async_callback(run_in_threadpool, self.log_writer.close)
        if self.config.keep_images_mb is not None:
            if self.log_writer is None:
                raise StartupError(
                    "--keep-images-mb writes through the prediction log's writer; "
                    "drop --no-log to keep images"
                )
            self.kept = await run_in_threadpool(
                KeptSample,
                self.config.keep_dir,
                int(self.config.keep_images_mb * 1_000_000),
                self.log_writer.put_task,
            )

    async def _load_model(
        self, spec: str, name: str | None = None, version: str = "1"
    ) -> ServedModel:
        """Load `spec`, run one batch through it (a model that cannot answer is refused
        here, not by a request) and start its batcher."""

        def load(threads: int) -> ImageClassifier:
            return ImageClassifier(
                spec,
                device=self.config.device,
                backend=self.config.backend,
                precision=self.config.precision,
                max_pixels=self.config.max_pixels,
                threads=threads,
            )

        classifier = await run_in_threadpool(load, self._threads)
        served_name, name = name, name or classifier.name
        blank = np.zeros((1, *classifier.preprocess.input_size), np.float32)
        await run_in_threadpool(classifier.predict_scored, blank)
        onnx = classifier.runtime.backend in ("onnx", "openvino")  # an export
        alone = None  # the same model on every core, for a batch with nothing beside it
        if onnx and self._alone_threads > self._threads:
            alone = await run_in_threadpool(load, self._alone_threads)
        batcher = Batcher(
            scored_rows(classifier),
            max_batch=self.config.max_batch or (ONNX_MAX_BATCH if onnx else 16),
            max_wait_ms=self.config.max_wait_ms,
            max_queue=self.config.max_queue,
            on_batch=self._observer(name, classifier.labels.names),
            name=name,
            workers=ONNX_WORKERS if onnx and self._processes == 1 else 1,
            predict_alone=None if alone is None else scored_rows(alone),
            alone=self.in_flight.alone,
        )
        await batcher.__aenter__()
        self.metrics.track_queue(name, lambda b=batcher: b.depth)
        return ServedModel(
            classifier,
            batcher,
            self.config.max_pixels,
            self._decode_pool,
            self.in_flight,
            self._budget,
            on_unknown=lambda count, n=name: self.metrics.count_unknown(n, count),
            torch_threads=self._threads,
            served_name=served_name,
            version=version,
        )

    async def rescan(self) -> None:
        """Bring the repository's live versions up: each one that changed loads and warms
        beside the one serving, then takes over between two batches; the old one finishes
        its requests and is released. A version that fails is refused, said in the log,
        and the live one keeps serving. Models unloaded through the API stay unloaded."""
        root = Path(self.config.model_repository)
        async with self._rescan_lock:
            found = await run_in_threadpool(scan_repository, root)
            self.repository = found
            for name, entry in found.items():
                for problem in entry.problems:
                    log.warning("model repository: %s", problem)
                version = self.pins.get(name, entry.live)
                if name in self.unloaded or version is None or version not in entry.versions:
                    continue
                current = self.models.get(name)
                if current is None or current.version != str(version):
                    await self._swap(name, str(version), entry.versions[version])
                await self._set_shadow(name, entry)

    async def _swap(self, name: str, version: str, path: Path) -> None:
        current = self.models.get(name)
        started = time.perf_counter()
        try:
            served = await self._load_model(str(path), name, version)
        except Exception as exc:  # any failure of a candidate: the live one stays
            self.refused[(name, version)] = f"{type(exc).__name__}: {exc}"
            log.error(
                "model %s version %s refused (%s: %s); %s",
                name,
                version,
                type(exc).__name__,
                exc,
                f"version {current.version} keeps serving" if current else "not served",
            )
            return
        self.refused.pop((name, version), None)
        self.models[name] = served  # requests that look it up from now on get this one
        log.info(
            "model %s version %s live (loaded and warmed in %.1f s)%s",
            name,
            version,
            time.perf_counter() - started,
            f"; version {current.version} drains" if current else "",
        )
        if current is not None:
            await self._release(current)

    async def _set_shadow(self, name: str, entry: RepositoryModel) -> None:
        """Start, change or stop `name`'s shadow as the policy says; a new pair of
        versions starts a new comparison."""
        live, current = self.models.get(name), self.shadows.get(name)
        wanted = None if live is None or entry.shadow is None else str(entry.shadow)
        if current is not None and current.version != wanted:
            del self.shadows[name]
            await self._release(current)
            current = None
        if wanted is not None and current is None:
            try:
                current = await self._load_model(str(entry.versions[entry.shadow]), name, wanted)
            except Exception as exc:  # the live version is untouched
                self.refused[(name, wanted)] = f"{type(exc).__name__}: {exc}"
                log.error("model %s shadow version %s refused (%s)", name, wanted, exc)
                return
            self.shadows[name] = current
            log.info("model %s version %s shadows version %s", name, wanted, live.version)
        comparison = self.comparisons.get(name)
        if wanted is None:
            self.comparisons.pop(name, None)
        elif comparison is None or (comparison.live_version, comparison.shadow_version) != (
            live.version,
            wanted,
        ):
            self.comparisons[name] = Comparison(live.version, wanted, entry.shadow_sample)
        else:
            comparison.sample = entry.shadow_sample

    def _copy_to_shadow(
        self,
        model: ServedModel,
        files: Sequence[tuple[str, bytes]],
        predictions: list[Predictions],
        latency_ms: float,
        top_k: int,
    ) -> None:
        """Send a sampled copy of a live request to the model's shadow, in the background;
        shed it when either queue is busy, so that the live model never waits for it."""
        shadow, comparison = self.shadows.get(model.name), self.comparisons.get(model.name)
        if shadow is None or comparison is None or random.random() >= comparison.sample:
            return
        if shadow.batcher.depth or model.batcher.depth or shadow.active:
            comparison.shed += 1
            return

        async def run() -> None:
            start = time.perf_counter()
            async with self.using(shadow, pinned=True) as candidate:
                answers = await candidate.classify(files, top_k=top_k)
            digests = [sha256_hex(data) for _, data in files]
            shadow_ms = (time.perf_counter() - start) * 1000
            comparison.add(digests, predictions, answers, latency_ms, shadow_ms)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._shadow_done)

    def _shadow_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # never the client's
            log.warning("shadow request failed: %s", task.exception())

    async def unload(self, name: str) -> None:
        """Stop serving `name` (the repository API); a load or rescan brings it back only
        through `load`. Only a repository's models: others could not come back."""
        if self.config.model_repository is None:
            raise RequestError("this server has no --model-repository: its models stay loaded")
        model = self.models.pop(name, None)
        if model is None:
            raise UnknownModel(f"no model named {name!r} is loaded")
        self.unloaded.add(name)
        log.info("model %s version %s unloaded", name, model.version)
        await self._release(model)

    async def load_from_repository(self, name: str, version: int | None = None) -> None:
        """Load `name` (pinned to `version` when given) from the repository, now."""
        if self.config.model_repository is None:
            raise RequestError("this server has no --model-repository to load from")
        self.unloaded.discard(name)
        if version is not None:
            self.pins[name] = version
        await self.rescan()
        entry = self.repository.get(name)
        live = self.models.get(name)
        if entry is None:
            raise UnknownModel(f"no model {name!r} in {self.config.model_repository}")
        wanted = str(self.pins.get(name, entry.live))
        if live is None or live.version != wanted:
            reason = self.refused.get((name, wanted), f"version {wanted} is not in the repository")
            raise RequestError(f"model {name!r} version {wanted} not loaded: {reason}")

    async def _release(self, model: ServedModel) -> None:
        """Retire `model`: wait for the requests holding it, finish its queue, stop it."""
        model.retired = True
        while model.active:
            await asyncio.sleep(0.01)
        await model.batcher.stop()

    async def _poll(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.rescan()
            except OSError as exc:  # the directory vanished or cannot be read: try again
                log.error("model repository rescan failed: %s", exc)

    async def _stop_all(self) -> None:
        for task in list(self._tasks):
            await task
        for model in [*self.models.values(), *self.shadows.values()]:
            await model.batcher.stop()

    def warm_explainer(self) -> None:
        """Start warming Grad-CAM for the default model in the background, once (the web
        page calls this when it is served: the page shows heat maps, API clients may never
        ask for one, and PyTorch costs about 1 GB of memory)."""
        if self._warm_up is None and self.loaded:
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
        pinned: bool = False,
    ) -> tuple[ServedModel, list[Predictions]]:
        """`model.classify` (by the version live now unless `pinned`; see `using`), each
        image's top-1 then queued for the prediction log with the version that answered."""
        start = time.perf_counter()
        async with self.using(model, pinned) as model:
            predictions = await model.classify(
                files, top_k=top_k, min_score=min_score, coverage=coverage
            )
        if self.shadows and min_score is None:
            elapsed_ms = (time.perf_counter() - start) * 1000
            self._copy_to_shadow(model, files, predictions, elapsed_ms, top_k)
        if self.log_writer is not None:
            latency_ms = (time.perf_counter() - start) * 1000
            # Hashed here, on the event loop: about 0.7 ms per MB, less than a thread
            # hand-off for a photo, and the queue then holds hashes, not uploads.
            self.log_writer.put(
                [
                    LoggedPrediction(
                        model.logged_name,
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
            if self.kept is not None:
                for (name, data), top in zip(files, predictions, strict=True):
                    self.kept.offer(
                        data, sha256_hex(data), name, top[0].label, _margin(top), top[0].unknown
                    )
        return model, predictions

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
        comparison = self.comparisons.get(model.name)
        if comparison is not None:
            comparison.add_label(digest, label)
        if self.log_writer is not None:
            await run_in_threadpool(
                self.log_writer.record_feedback, model.name, digest, label, relative
            )
        return {"model": model.name, "sha256": digest, "label": label, "path": relative}
