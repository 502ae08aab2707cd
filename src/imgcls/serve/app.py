"""The FastAPI app of `imgcls serve`: its routers (routes/, v2.py), middleware and errors.

`create_app(config)` builds the app; the models load in its lifespan handler, so building
an app is cheap and a server answers only once its models are ready. `server.run` serves it,
in one process or in each worker process (serve/workers.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from imgcls.serve import v2
from imgcls.serve.auth import ApiKeys, protect
from imgcls.serve.balance import RebalanceMiddleware
from imgcls.serve.errors import install_error_handlers
from imgcls.serve.head import HeadAsGetMiddleware
from imgcls.serve.inflight import InFlight
from imgcls.serve.lifecycle import KeepAliveOffMiddleware
from imgcls.serve.limits import BodyLimitMiddleware
from imgcls.serve.metrics import REFRESH_S, Metrics, RequestMetricsMiddleware
from imgcls.serve.request_id import RequestIdMiddleware
from imgcls.serve.routes import (
    classify,
    explain,
    feedback,
    health,
    models,
    page,
    queue,
    repository,
    similar,
)
from imgcls.serve.service import ServeConfig, Service
from imgcls.version import __version__

__all__ = ["create_app"]

log = logging.getLogger("imgcls.serve")


def create_app(config: ServeConfig | None = None, in_flight: InFlight | None = None) -> FastAPI:
    """The service for `config`; its models load when the app starts (lifespan).
    `in_flight`: this worker's counter among the server's processes (default: alone)."""
    config = config or ServeConfig()
    service = Service(config, Metrics(), in_flight or InFlight())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            try:
                await service.load(stack)
                await similar.load_index(app, config.index, config.max_pixels)
                await queue.load_queue(app, config.label_queue, config.feedback_dir)
            except Exception as exc:
                app.state.startup_error = exc
                raise
            log.info(
                "serving %s on http://%s:%d",
                ", ".join(f"{m.name}:{m.version}" for m in service.models.values()),
                config.host,
                config.port,
            )
            if service.metrics.multiprocess:
                refreshing = asyncio.create_task(_refresh(service.metrics))
                stack.callback(refreshing.cancel)
            yield  # batchers finish their queues when the stack closes

    app = FastAPI(
        title="imgcls",
        version=__version__,
        description="Image classification: REST (v1) and the Open Inference Protocol (v2).",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.startup_error = None
    app.state.api_keys = ApiKeys(config.api_keys) if config.api_keys else None
    install_error_handlers(app)
    for routes in (health, models, classify, explain, feedback, similar, queue, page):
        app.include_router(routes.router)
    app.include_router(v2.router)
    app.include_router(repository.router)
    # Added last, runs first: every response has its request ID; requests are timed and
    # counted including a 401 or a 413; a request without its key is refused before its
    # body is read. With no keys there is no check at all.
    app.add_middleware(HeadAsGetMiddleware)  # innermost: the log and metrics say HEAD
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=config.max_upload_bytes,
        idle_timeout_s=config.body_idle_timeout_s,
        timeout_s=config.body_timeout_s,
    )
    if app.state.api_keys is not None:
        protect(app, app.state.api_keys, metrics_auth=config.metrics_auth)
    if (config.workers or 1) > 1:
        app.add_middleware(RebalanceMiddleware, in_flight=service.in_flight)
    app.add_middleware(RequestMetricsMiddleware, metrics=service.metrics)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(KeepAliveOffMiddleware, is_draining=lambda: service.draining)
    return app


async def _refresh(metrics: Metrics) -> None:
    """Write this worker's function gauges for the other workers' `/metrics`, for ever."""
    while True:
        await asyncio.sleep(REFRESH_S)
        metrics.refresh()
