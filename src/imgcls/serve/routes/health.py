"""Health and metrics: liveness and readiness for orchestrators, Prometheus text for
scrapers."""

from __future__ import annotations

from fastapi import APIRouter, Response

from imgcls.serve.deps import ServiceDep
from imgcls.serve.errors import ApiError
from imgcls.serve.metrics import CONTENT_TYPE_LATEST
from imgcls.serve.schemas import Health, error_responses
from imgcls.serve.service import Service

router = APIRouter()


@router.get("/healthz", response_model=Health, responses=error_responses(503), tags=["health"])
async def healthz(service: ServiceDep) -> Health:
    """Liveness: 200 once the models are loaded, draining or not (a restart would not help)."""
    if not service.loaded:
        raise ApiError(503, "NotReady", "models are still loading")
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses=error_responses(503), tags=["health"])
async def readyz(service: ServiceDep) -> Health:
    """Readiness: 200 while this server should get traffic; 503 while its models load and
    from SIGTERM on (it is draining), so the load balancer stops sending it requests."""
    if not service.ready:
        raise not_ready(service)
    return Health(status="ok")


def not_ready(service: Service) -> ApiError:
    """The 503 of a readiness probe, saying why."""
    if service.draining:
        return ApiError(503, "Draining", "the server is shutting down (SIGTERM); send elsewhere")
    return ApiError(503, "NotReady", "models are still loading")


@router.get("/metrics", include_in_schema=False)
async def metrics(service: ServiceDep) -> Response:
    """Prometheus text format."""
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
