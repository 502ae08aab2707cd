"""Corrections from users: a true label for an image, kept for the next training."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from imgcls.serve.deps import ServiceDep
from imgcls.serve.errors import ApiError
from imgcls.serve.schemas import FeedbackResponse, error_responses
from imgcls.serve.uploads import read_form

router = APIRouter()


@router.post(
    "/v1/feedback",
    response_model=FeedbackResponse,
    responses=error_responses(400, 404, 413, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "label"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "label": {"type": "string", "description": "The right class."},
                        },
                    }
                }
            },
        }
    },
    tags=["v1"],
)
async def feedback(
    request: Request,
    service: ServiceDep,
    model: Annotated[str | None, Query(description="Model name; default: the first.")] = None,
) -> FeedbackResponse:
    """A corrected label for an image: multipart `file` (the image) and `label` (one of
    the model's classes, see /v1/models/{name}/labels; 422 otherwise). The image is kept
    in the feedback directory under its label, and the correction logged."""
    served = service.get(model)
    files, fields = await read_form(request, max_files=1)
    label = fields.get("label", "").strip()
    if not label:
        raise ApiError(400, "BadRequest", "no 'label' field in the multipart body")
    [(name, data)] = files
    return FeedbackResponse(**await service.add_feedback(served, name, data, label))
