"""Classification: uploaded images in, top-k predictions out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from imgcls.errors import ModelError, RequestError
from imgcls.serve.deps import ServiceDep
from imgcls.serve.schemas import (
    CLASSIFY_BODY,
    ClassifyResponse,
    error_responses,
)
from imgcls.serve.uploads import is_raw_image, read_body, read_files

router = APIRouter()


@router.post(
    "/v1/classify",
    response_model=ClassifyResponse,
    responses=error_responses(400, 404, 413, 422, 503),
    openapi_extra=CLASSIFY_BODY,
    tags=["v1"],
)
async def classify(
    request: Request,
    service: ServiceDep,
    top_k: Annotated[int, Query(ge=1, description="Predictions per image.")] = 5,
    model: Annotated[str | None, Query(description="Model name; default: the first.")] = None,
    version: Annotated[
        str | None, Query(description="Only this version of the model (404 unless it is live).")
    ] = None,
    min_score: Annotated[
        float | None,
        Query(
            ge=0.0,
            le=1.0,
            description="Mark an image unknown when its top score is below this "
            "(replaces the model's own rule).",
        ),
    ] = None,
    coverage: Annotated[
        float | None,
        Query(
            gt=0.0,
            le=1.0,
            description="Add each image's prediction_set: the labels that hold the true one "
            "with this probability (the model's conformal calibration).",
        ),
    ] = None,
) -> Response:
    """Top-k labels for each uploaded `file` (multipart; several `file` fields: a batch),
    or for one image sent as the raw body (`Content-Type: image/jpeg`, ...; its result's
    filename is empty)."""
    served = service.get(model, version)
    try:  # before reading the uploads: a model without a calibration split has no sets
        served.classifier.check_coverage(coverage)
    except ModelError as exc:
        raise RequestError(str(exc)) from None
    if is_raw_image(request.headers.get("content-type", "")):
        files = [("", await read_body(request))]
    else:
        files = await read_files(request, max_files=service.config.max_queue)
    served, predictions = await service.classify_and_log(
        served,
        files,
        top_k=top_k,
        min_score=min_score,
        coverage=coverage,
        pinned=version is not None,
    )
    # A ClassifyResponse, written directly: built as models and validated once more by
    # FastAPI, a one-image answer took 41 µs of the event loop instead of 10.
    return JSONResponse(
        {
            "model": served.name,
            "model_version": served.version,
            "results": [
                {"filename": name, **preds.to_dict()}
                for (name, _), preds in zip(files, predictions, strict=True)
            ],
        }
    )
