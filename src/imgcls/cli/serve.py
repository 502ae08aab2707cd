"""`imgcls serve`: the HTTP server (imgcls.serve) with the options of its ServeConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from imgcls.cli.app import app
from imgcls.cli.options import Backend, BackendOption, Precision, PrecisionOption
from imgcls.data.images import DEFAULT_MAX_PIXELS
from imgcls.models.registry import DEFAULT_MODEL
from imgcls.serve.feedback import (
    DEFAULT_FEEDBACK_DIR,
    DEFAULT_FEEDBACK_MAX_MB,
    DEFAULT_LOG_DB,
    DEFAULT_LOG_MAX_ROWS,
)
from imgcls.serve.keep import DEFAULT_KEEP_DIR

# The options, named here so that the command reads as its list of settings.
Models = Annotated[
    list[str] | None,
    typer.Option(
        "--model",
        "-m",
        help="Model name or run directory; repeat to serve several (the first is the default).",
    ),
]
Host = Annotated[str, typer.Option(help="Address to bind.")]
Port = Annotated[
    int, typer.Option(min=0, max=65535, help="Port to bind (0: a free one, named in the log).")
]
MaxBatch = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Images per model call (default: 4 with ONNX Runtime, which runs two calls "
        "at once; 16 with PyTorch).",
    ),
]
MaxWaitMs = Annotated[
    float,
    typer.Option(
        min=0,
        help="How long a batch waits to fill, in milliseconds (default: not at all; "
        "batches form while the model runs).",
    ),
]
MaxQueue = Annotated[
    int, typer.Option(min=1, help="Images waiting for the model; beyond it requests get 503.")
]
MaxUploadMb = Annotated[
    float, typer.Option(min=0, help="Request body limit in MB; larger uploads get 413.")
]
MaxPixels = Annotated[
    int, typer.Option(min=1, help="Refuse images with more pixels than this (422).")
]
Threads = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Threads per model call (default: the cores shared among the workers, all of "
        "them for a batch alone on the server; in one process, one core less).",
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Server processes sharing the port, each with its own copy of the models "
        "(default: one per core on the CPU with ONNX Runtime, else 1).",
    ),
]
ApiKeys = Annotated[
    list[str] | None,
    typer.Option(
        "--api-key",
        metavar="KEY",
        envvar="IMGCLS_API_KEY",
        help="Require this key (Authorization: Bearer KEY or X-API-Key: KEY) on every "
        "endpoint but /healthz, /v2/health/* and /metrics; repeat for several (in the "
        "variable: separated by spaces). Default: none on loopback, else a generated one.",
    ),
]
ApiKeyFile = Annotated[
    Path | None, typer.Option(help="File of API keys, one per line ('#' comments).")
]
NoAuth = Annotated[
    bool, typer.Option("--no-auth", help="Require no key, even when bound off loopback.")
]
MetricsAuth = Annotated[
    bool, typer.Option("--metrics-auth", help="Require the key on /metrics too.")
]
LogDb = Annotated[
    str,
    typer.Option(
        help="SQLite file that logs every prediction (WAL mode), or a postgresql:// URL that "
        "several servers share (pip install 'imgcls[postgres]')."
    ),
]
NoLog = Annotated[bool, typer.Option("--no-log", help="Do not log predictions.")]
LogMaxRows = Annotated[
    int, typer.Option(min=1, help="Keep at most this many predictions; the oldest go.")
]
LogMaxDays = Annotated[
    float | None, typer.Option(help="Delete predictions older than this many days.")
]
FeedbackDir = Annotated[
    Path, typer.Option(help="Where corrected images are kept, in class folders.")
]
FeedbackMaxMb = Annotated[
    float, typer.Option(help="Refuse corrections (507) once their images take this many MB.")
]
ModelRepository = Annotated[
    Path | None,
    typer.Option(
        help="Serve DIR/<name>/<version>/ (a run directory or one .onnx each; the newest "
        "version is live unless DIR/<name>/policy.json pins one) instead of --model; "
        "SIGHUP rescans it.",
    ),
]
PollRepository = Annotated[
    float | None,
    typer.Option(min=0.1, help="Also rescan --model-repository every this many seconds."),
]
DrainSeconds = Annotated[
    float,
    typer.Option(
        min=0,
        help="After SIGTERM, keep serving this long with readiness (/readyz, "
        "/v2/health/ready) at 503, so load balancers stop sending requests first.",
    ),
]
GracefulTimeout = Annotated[
    float,
    typer.Option(
        min=0,
        help="After SIGTERM, exit within this many seconds whatever clients do "
        "(Kubernetes: at most terminationGracePeriodSeconds).",
    ),
]

Index = Annotated[
    Path | None,
    typer.Option(help="An `imgcls index` folder: POST /v1/similar finds images like an upload."),
]

KeepImagesMb = Annotated[
    float | None,
    typer.Option(
        min=0.001,
        help="Keep up to this many MB of served images worth labelling (unknown, lowest "
        "margin, a random 1%) for `imgcls select`; off by default: uploads may be private.",
    ),
]
KeepDir = Annotated[Path, typer.Option(help="Where --keep-images-mb keeps them.")]
LabelQueueFile = Annotated[
    Path | None,
    typer.Option(help="A label file to work through on the page (/#label): imgcls select's."),
]


@app.command()
def serve(
    model: Models = None,
    host: Host = "127.0.0.1",
    port: Port = 8000,
    max_batch: MaxBatch = None,
    max_wait_ms: MaxWaitMs = 0.0,
    max_queue: MaxQueue = 256,
    max_upload_mb: MaxUploadMb = 20.0,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    threads: Threads = None,
    workers: Workers = None,
    backend: BackendOption = Backend.auto,
    precision: PrecisionOption = Precision.auto,
    api_key: ApiKeys = None,
    api_key_file: ApiKeyFile = None,
    no_auth: NoAuth = False,
    metrics_auth: MetricsAuth = False,
    log_db: LogDb = DEFAULT_LOG_DB,
    no_log: NoLog = False,
    log_max_rows: LogMaxRows = DEFAULT_LOG_MAX_ROWS,
    log_max_days: LogMaxDays = None,
    feedback_dir: FeedbackDir = Path(DEFAULT_FEEDBACK_DIR),
    feedback_max_mb: FeedbackMaxMb = DEFAULT_FEEDBACK_MAX_MB,
    index: Index = None,
    keep_images_mb: KeepImagesMb = None,
    keep_dir: KeepDir = Path(DEFAULT_KEEP_DIR),
    label_queue: LabelQueueFile = None,
    model_repository: ModelRepository = None,
    poll_repository: PollRepository = None,
    drain_seconds: DrainSeconds = 5.0,
    graceful_timeout: GracefulTimeout = 30.0,
) -> None:
    """Serve models over HTTP: web page, REST, KServe v2, metrics."""
    # deferred: the server (FastAPI, uvicorn) loads only to serve
    from imgcls.serve.auth import read_key_file
    from imgcls.serve.server import run
    from imgcls.serve.service import ServeConfig

    keys = (*(api_key or ()), *(read_key_file(api_key_file) if api_key_file else ()))
    run(
        ServeConfig(
            models=tuple(model or ([] if model_repository else [DEFAULT_MODEL])),
            model_repository=None if model_repository is None else str(model_repository),
            poll_repository_s=poll_repository,
            host=host,
            port=port,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            max_upload_mb=max_upload_mb,
            max_pixels=max_pixels,
            threads=threads,
            workers=workers,
            backend=backend.value,
            precision=precision.value,
            api_keys=keys,
            no_auth=no_auth,
            metrics_auth=metrics_auth,
            log_db=None if no_log else str(log_db),
            log_max_rows=log_max_rows,
            log_max_days=log_max_days,
            feedback_dir=str(feedback_dir),
            feedback_max_mb=feedback_max_mb,
            index=None if index is None else str(index),
            keep_images_mb=keep_images_mb,
            keep_dir=str(keep_dir),
            label_queue=None if label_queue is None else str(label_queue),
            drain_s=drain_seconds,
            graceful_timeout_s=graceful_timeout,
        )
    )
