"""The response models and OpenAPI request bodies of the REST routes (v1)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from imgcls.serve.errors import ErrorResponse


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class ModelInfo(BaseModel):
    name: str
    num_classes: int
    input_size: list[int] = Field(description="[C, H, W] of the model input")
    backend: str
    precision: str = Field(examples=["bf16"], description="fp32, bf16 or int8")


class ModelList(BaseModel):
    models: list[ModelInfo] = Field(description="The first is the default model.")


class PredictionOut(BaseModel):
    label: str
    class_id: str
    index: int
    score: float
    unknown: bool = Field(
        description="True when the model declines to name the image (the same on every "
        "prediction of one image): its rejection rule, or min_score, says it is not sure."
    )
    present: bool = Field(
        False,
        description="The model asserts this class: a single-label model's top-1 (unless "
        "unknown), a multi-label model's classes at or above their thresholds.",
    )


class AnswerOut(BaseModel):
    label: str
    probability: float = Field(description="The summed probability of the node's classes.")
    path: list[str] = Field(description="The nodes from the root down to the answer.")


class FileResult(BaseModel):
    filename: str
    predictions: list[PredictionOut]
    labels: list[str] = Field(
        description="The classes the model asserts, best first (every present class, even "
        "beyond top_k); empty when the image is unknown."
    )
    prediction_set: list[str] | None = Field(
        None,
        description="With ?coverage=L: the conformal prediction set, most probable first; "
        "it holds the true label with probability at least L on data like the model's "
        "calibration split.",
    )
    answer: AnswerOut | None = Field(
        None,
        description="A model with a taxonomy: the deepest node whose summed probability "
        "reaches its answer confidence (null when none does).",
    )


class ClassifyResponse(BaseModel):
    model: str
    model_version: str  # the version that answered ("1" outside a model repository)
    results: list[FileResult]


class LabelList(BaseModel):
    model: str
    labels: list[str] = Field(description="Class names, in the model's output order.")


class ExplainResponse(BaseModel):
    model: str
    filename: str
    prediction: PredictionOut = Field(description="The explained class and its probability.")
    image_png_base64: str = Field(description="The image with the Grad-CAM heat map, PNG.")


class FeedbackResponse(BaseModel):
    model: str
    sha256: str = Field(description="SHA-256 of the uploaded file, as in the prediction log.")
    label: str = Field(description="The corrected label, as stored.")
    path: str = Field(description="Where the image is kept, under the feedback directory.")


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse} for status in statuses}


# The upload is read from the stream by the path function (so the body cap applies while
# it streams), hence the request body is described here rather than by parameters.
MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "format": "binary"},
                            "description": "One or more image files.",
                        }
                    },
                }
            }
        },
    }
}


# The raw-body alternative of /v1/classify: one image as the whole body.
RAW_IMAGE_TYPES = ("image/*", "application/octet-stream")


CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **MULTIPART_BODY["requestBody"]["content"],
            **{
                media_type: {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "One image file as the whole body; its result's "
                        "filename is empty.",
                    }
                }
                for media_type in RAW_IMAGE_TYPES
            },
        },
    }
}
