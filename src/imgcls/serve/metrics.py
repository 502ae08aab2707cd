"""Prometheus metrics of one app, and the middleware that counts, times and logs requests.

Each app has its own `CollectorRegistry`, so several apps in one process (tests) do not
share counters.

Under `imgcls serve --workers N` (serve/workers.py) the worker processes share their
metrics through prometheus_client's multiprocess mode: PROMETHEUS_MULTIPROC_DIR, set by
the parent, holds each process's values, and whichever worker answers `/metrics` renders
the totals. A gauge read from a function (queue depths, feedback bytes) is written there
by each worker every `REFRESH_S` seconds and before it renders.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgcls.serve.request_id import current_request_id

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "RequestMetricsMiddleware"]

log = logging.getLogger("imgcls.serve")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
REFRESH_S = 1.0  # how often a worker writes its function gauges for the others to read


class Metrics:
    """The service's metrics; `render()` is the text `/metrics` answers with."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # prometheus_client keeps values in that directory when it is set (the variable is
        # its own); a gauge then sums the values of the live workers.
        self.multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        self._watched: list[tuple[Gauge, Callable[[], float]]] = []
        self.requests = Counter(
            "imgcls_http_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "imgcls_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "imgcls_batch_size",
            "Images per model call.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "imgcls_queue_depth",
            "Images waiting for the model.",
            ["model"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.predictions = Counter(
            "imgcls_predictions",
            "Top-1 predictions by model and class label.",
            ["model", "label"],
            registry=self.registry,
        )
        self.confidence = Histogram(
            "imgcls_top1_confidence",
            "Top-1 probability of each prediction.",
            ["model"],
            buckets=_CONFIDENCE_BUCKETS,
            registry=self.registry,
        )

        self.unknown = Counter(
            "imgcls_unknown_predictions",
            "Images answered 'unknown' (below the model's rejection threshold or min_score).",
            ["model"],
            registry=self.registry,
        )
        self.log_dropped = Counter(
            "imgcls_prediction_log_dropped",
            "Prediction-log rows dropped because the writer's queue was full (disk stalled).",
            registry=self.registry,
        )
        self.log_write_errors = Counter(
            "imgcls_prediction_log_write_errors",
            "Failed prediction-log writes (a batch of rows lost each: disk full, read-only).",
            registry=self.registry,
        )
        self.log_queue_depth = Gauge(
            "imgcls_prediction_log_queue_depth",
            "Prediction-log rows waiting for the writer.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.log_deleted = Counter(
            "imgcls_prediction_log_deleted",
            "Prediction-log rows deleted to keep the log within --log-max-rows/--log-max-days.",
            registry=self.registry,
        )
        self.feedback_refused = Counter(
            "imgcls_feedback_refused",
            "Corrections refused with 507: over --feedback-max-mb, or the disk refused them.",
            registry=self.registry,
        )
        self.feedback_bytes = Gauge(
            "imgcls_feedback_bytes",
            "Bytes of corrected images kept in the feedback directory.",
            registry=self.registry,
            multiprocess_mode="livemax",  # one directory: every worker counts the same files
        )

    def count_unknown(self, model: str, count: int) -> None:
        self.unknown.labels(model).inc(count)

    def track_queue(self, model: str, depth: Callable[[], int]) -> None:
        self.watch(self.queue_depth.labels(model), depth)

    def watch(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """Let `gauge` show `read()`: read when rendered, or in multiprocess mode written
        by `refresh`."""
        if self.multiprocess:
            self._watched.append((gauge, read))
            gauge.set(read())
        else:
            gauge.set_function(read)

    def refresh(self) -> None:
        """Write the watched gauges' values (multiprocess mode; the app calls it every
        REFRESH_S seconds)."""
        for gauge, read in self._watched:
            gauge.set(read())

    def observe_batch(self, model: str, labels: Sequence[str], probabilities: np.ndarray) -> None:
        """Batch size, top-1 class and top-1 confidence of a batch of (N, C) probabilities."""
        self.batch_size.labels(model).observe(len(probabilities))
        top = probabilities.argmax(axis=1)
        for row, index in zip(probabilities, top, strict=True):
            self.predictions.labels(model, labels[index]).inc()
            self.confidence.labels(model).observe(float(row[index]))

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        self.refresh()
        totals = CollectorRegistry()
        multiprocess.MultiProcessCollector(totals)
        return generate_latest(totals)


# The web page's address may carry the API key (`/?key=...`, as the server prints it); the
# log keeps the rest of the query.
_KEY_IN_QUERY = re.compile(r"(^|&)key=[^&]*")


class RequestMetricsMiddleware:
    """Counts and times every HTTP request by its route template, and logs one line each:
    client, method, path, status, milliseconds and the request ID."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app fails before it answers

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            # The route template, not the path, keeps label values few (/v2/models/{name}).
            template = getattr(route, "path", "<unmatched>")
            self.metrics.requests.labels(template, scope["method"], str(status)).inc()
            self.metrics.latency.labels(template).observe(elapsed)
            client = scope.get("client") or ("-", 0)
            query = scope.get("query_string", b"").decode("latin-1")
            query = _KEY_IN_QUERY.sub(r"\1key=***", query)
            log.info(
                '%s "%s %s%s" %d %.1fms %s',
                client[0],
                scope["method"],
                scope["path"],
                f"?{query}" if query else "",
                status,
                elapsed * 1000,
                current_request_id(),
            )
