"""Health and metrics: liveness for orchestrators, Prometheus text for scrapers."""

from __future__ import annotations

from fastapi import APIRouter, Response

from imgcls.serve.deps import ServiceDep
from imgcls.serve.errors import ApiError
from imgcls.serve.metrics import CONTENT_TYPE_LATEST
from imgcls.serve.schemas import Health, error_responses

router = APIRouter()


@router.get("/healthz", response_model=Health, responses=error_responses(503), tags=["health"])
async def healthz(service: ServiceDep) -> Health:
    """200 once the models are loaded."""
    if not service.ready:
        raise ApiError(503, "NotReady", "models are still loading")
    return Health(status="ok")


@router.get("/metrics", include_in_schema=False)
async def metrics(service: ServiceDep) -> Response:
    """Prometheus text format."""
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
