"""Grad-CAM heat maps: why the model chose a class."""

from __future__ import annotations

import base64
from typing import Annotated

import cv2
from fastapi import APIRouter, Query, Request, Response

from imgcls.serve.deps import ServiceDep
from imgcls.serve.schemas import MULTIPART_BODY, ExplainResponse, PredictionOut, error_responses
from imgcls.serve.uploads import read_files

router = APIRouter()


@router.post(
    "/v1/explain",
    response_model=ExplainResponse,
    responses={
        200: {"content": {"image/png": {}}, "description": "PNG, or JSON with format=json."},
        **error_responses(400, 404, 413, 422),
    },
    openapi_extra=MULTIPART_BODY,
    tags=["v1"],
)
async def explain(
    request: Request,
    service: ServiceDep,
    model: Annotated[str | None, Query(description="Model name; default: the first.")] = None,
    label: Annotated[
        str | None,
        Query(alias="class", description="Class to explain (label, id or index); default: top-1."),
    ] = None,
    response_format: Annotated[
        str, Query(alias="format", pattern="^(png|json)$", description="png | json")
    ] = "png",
) -> Response:
    """Grad-CAM: the uploaded `file` with a heat map of what made the model choose the
    class. PNG by default; `format=json` gives the prediction and the PNG in base64."""
    served = service.get(model)
    files = await read_files(request, max_files=1)
    [(name, data)] = files
    explanation = await served.explain(name, data, label)
    ok, png = cv2.imencode(".png", cv2.cvtColor(explanation.overlay(), cv2.COLOR_RGB2BGR))
    assert ok, "OpenCV failed to encode a PNG"
    prediction = explanation.prediction
    if response_format == "json":
        return Response(
            ExplainResponse(
                model=served.name,
                filename=name,
                prediction=PredictionOut(**prediction.to_dict()),
                image_png_base64=base64.b64encode(png.tobytes()).decode("ascii"),
            ).model_dump_json(),
            media_type="application/json",
        )
    headers = {"X-Class-Index": str(prediction.index), "X-Score": f"{prediction.score:.6f}"}
    return Response(png.tobytes(), media_type="image/png", headers=headers)
