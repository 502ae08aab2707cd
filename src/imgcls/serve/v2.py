"""The KServe / Triton Open Inference Protocol (v2) over HTTP, so `tritonclient.http`
and KServe clients work unchanged.

Each model takes one of two inputs — FP32 `input` [N, 3, H, W], already preprocessed, or
BYTES `image` [N], encoded image files — and returns FP32 `probabilities` [N, C]. Tensors
travel as JSON or with the binary-data extension: the JSON header comes first, its length
in the `Inference-Header-Content-Length` header, and the raw tensor bytes follow in order
(a BYTES element is a 4-byte little-endian length and its bytes).
Protocol: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/
"""

from __future__ import annotations

import math
import struct
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field, ValidationError

from imgcls.serve.deps import ServiceDep
from imgcls.serve.errors import REQUEST_ID_DOC, ApiError
from imgcls.serve.limits import ascii_count
from imgcls.serve.routes.health import not_ready
from imgcls.serve.service import ServedModel
from imgcls.version import __version__

__all__ = ["router"]

HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT_TENSOR, IMAGE_TENSOR, OUTPUT_TENSOR = "input", "image", "probabilities"


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    # A run's conformal calibration ({"conformal": ...}, as in the ONNX metadata), so that
    # a client computes prediction sets from `probabilities` (docs/trust.md).
    parameters: dict[str, Any] | None = None


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class InputTensor(BaseModel):
    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InputTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[float] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


class V2Error(BaseModel):
    error: str
    request_id: str = Field(description=REQUEST_ID_DOC)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": V2Error} for status in statuses}


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its `$defs` substituted in place: `openapi_extra` is
    merged into the document as is, where `#/$defs/...` would not resolve."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return resolve(schema)


# The body is parsed by the path function: it is JSON, or JSON followed by binary tensors.
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline_refs(InferenceRequest.model_json_schema())},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"Binary-data extension: JSON header of {HEADER_LENGTH} "
                "bytes, then the tensors' bytes.",
            },
        },
    }
}


router = APIRouter(prefix="/v2", tags=["v2"])


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="imgcls", version=__version__, extensions=["binary_tensor_data"])


@router.get("/health/live", response_model=Live)
async def live() -> Live:
    return Live(live=True)


@router.get("/health/ready", response_model=Ready, responses=_errors(503))
async def ready(service: ServiceDep) -> Ready:
    if not service.ready:
        raise not_ready(service)
    return Ready(ready=True)


@router.get("/models/{name}", response_model=ModelMetadata, responses=_errors(404))
@router.get(
    "/models/{name}/versions/{version}", response_model=ModelMetadata, responses=_errors(404)
)
async def model_metadata(
    name: str, service: ServiceDep, version: str | None = None
) -> ModelMetadata:
    model = service.get(name, version)
    _, height, width = model.input_size
    return ModelMetadata(
        name=model.name,
        versions=[model.version],
        platform=model.classifier.runtime.backend,
        inputs=[
            TensorMetadata(name=INPUT_TENSOR, datatype="FP32", shape=[-1, 3, height, width]),
            TensorMetadata(name=IMAGE_TENSOR, datatype="BYTES", shape=[-1]),
        ],
        outputs=[
            TensorMetadata(
                name=OUTPUT_TENSOR, datatype="FP32", shape=[-1, model.classifier.num_classes]
            )
        ],
        parameters=_conformal_parameters(model.classifier),
    )


def _conformal_parameters(classifier) -> dict[str, Any] | None:
    conformal = classifier.conformal
    return None if conformal is None else {"conformal": conformal.to_config()}


@router.get("/models/{name}/ready", response_model=ModelReady, responses=_errors(404))
@router.get(
    "/models/{name}/versions/{version}/ready", response_model=ModelReady, responses=_errors(404)
)
async def model_ready(name: str, service: ServiceDep, version: str | None = None) -> ModelReady:
    return ModelReady(name=service.get(name, version).name, ready=True)


_INFER = {
    "response_model": None,
    "responses": {200: {"model": InferenceResponse}, **_errors(400, 404, 408, 413, 422, 503)},
    "openapi_extra": _INFER_BODY,
}


@router.post("/models/{name}/infer", **_INFER)
@router.post("/models/{name}/versions/{version}/infer", **_INFER)
async def infer(
    name: str, request: Request, service: ServiceDep, version: str | None = None
) -> Response:
    """Class probabilities for a batch given as FP32 `input` or BYTES `image`."""
    model = service.get(name, version)
    body = b"".join([chunk async for chunk in request.stream()])
    inference, binary = _parse_request(body, request.headers.get(HEADER_LENGTH))
    tensor, data = _single_input(inference, binary)
    binary_output = _binary_output(inference)
    async with service.using(model, pinned=version is not None) as model:
        if tensor.name == INPUT_TENSOR:
            probabilities = await model.probabilities(_fp32_input(tensor, data, model))
        else:
            images = _bytes_input(tensor, data, model)
            files = [(f"image[{i}]", image) for i, image in enumerate(images)]
            probabilities = await model.probabilities_for_images(files)
    return _response(inference, model, probabilities.astype(np.float32), binary_output)


def _parse_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """The JSON part, validated, and the binary part after it (empty without one)."""
    split = len(body)
    if header_length is not None:
        split = ascii_count(header_length)
        if split is None or split > len(body):
            raise _bad(
                f"{HEADER_LENGTH} must be a byte count within the body's "
                f"{len(body)} bytes, got {header_length!r}"
            )
    try:
        inference = InferenceRequest.model_validate_json(body[:split])
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()
        )
        raise _bad(f"invalid inference request: {problems}") from None
    return inference, body[split:]


def _single_input(inference: InferenceRequest, binary: bytes) -> tuple[InputTensor, Any]:
    """The one input tensor and its data: a list from JSON or bytes from the binary part."""
    if len(inference.inputs) != 1 or inference.inputs[0].name not in (INPUT_TENSOR, IMAGE_TENSOR):
        given = [tensor.name for tensor in inference.inputs]
        raise _bad(
            f"expected one input, FP32 {INPUT_TENSOR!r} or BYTES {IMAGE_TENSOR!r}; got {given}"
        )
    tensor = inference.inputs[0]
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        if tensor.data is None:
            raise _bad(f"input {tensor.name!r} has neither 'data' nor binary_data_size")
        if binary:
            raise _bad(f"{len(binary)} bytes of binary data follow, but no input claims them")
        return tensor, tensor.data
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise _bad(
            f"input {tensor.name!r}: binary_data_size {size!r} does not match the "
            f"{len(binary)} bytes after the JSON header"
        )
    return tensor, binary


def _fp32_input(tensor: InputTensor, data: Any, model: ServedModel) -> list[np.ndarray]:
    expected = [3, model.input_size[1], model.input_size[2]]
    if tensor.datatype != "FP32" or len(tensor.shape) != 4 or tensor.shape[1:] != expected:
        raise _bad(
            f"input {INPUT_TENSOR!r} must be FP32 [N, {', '.join(map(str, expected))}]; "
            f"got {tensor.datatype} {tensor.shape}"
        )
    count = math.prod(tensor.shape)
    try:
        if isinstance(data, bytes):
            if len(data) != 4 * count:
                raise ValueError(f"{len(data)} bytes for {count} FP32 values")
            array = np.frombuffer(data, dtype="<f4")
        else:
            array = np.asarray(data, dtype=np.float32).ravel()
            if array.size != count:
                raise ValueError(f"{array.size} values for shape {tensor.shape}")
    except (ValueError, TypeError, OverflowError) as exc:
        raise _bad(f"input {INPUT_TENSOR!r}: {exc}") from None
    if not np.isfinite(array).all():
        raise _bad(f"input {INPUT_TENSOR!r} contains NaN or infinite values")
    return list(array.astype(np.float32).reshape(tensor.shape))


def _bytes_input(tensor: InputTensor, data: Any, model: ServedModel) -> list[bytes]:
    if (
        tensor.datatype != "BYTES"
        or len(tensor.shape) not in (1, 2)
        or math.prod(tensor.shape[1:]) != 1
    ):
        raise _bad(
            f"input {IMAGE_TENSOR!r} must be BYTES [N] (or [N, 1]); "
            f"got {tensor.datatype} {tensor.shape}"
        )
    count = tensor.shape[0]
    if isinstance(data, bytes):
        elements = _unpack_bytes(data)
    else:
        elements = [v.encode() if isinstance(v, str) else v for v in _flatten(data)]
        if not all(isinstance(v, bytes) for v in elements):
            raise _bad(f"input {IMAGE_TENSOR!r}: JSON data must be strings")
    if len(elements) != count:
        raise _bad(f"input {IMAGE_TENSOR!r}: {len(elements)} elements for shape {tensor.shape}")
    return elements


def _unpack_bytes(data: bytes) -> list[bytes]:
    """BYTES elements from the binary encoding: a uint32 LE length before each element."""
    elements, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise _bad("BYTES tensor data ends inside an element's length prefix")
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + length > len(data):
            raise _bad("BYTES tensor data ends inside an element")
        elements.append(data[offset : offset + length])
        offset += length
    return elements


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for value in data:
        flat.extend(_flatten(value) if isinstance(value, list) else [value])
    return flat


def _response(
    inference: InferenceRequest, model: ServedModel, probabilities: np.ndarray, binary: bool
) -> Response:
    if not np.isfinite(probabilities).all():
        raise ApiError(422, "NonFinite", "the model gave non-finite outputs for this input")
    output = OutputTensor(name=OUTPUT_TENSOR, shape=list(probabilities.shape), datatype="FP32")
    if binary:
        output.parameters = {"binary_data_size": probabilities.nbytes}
    else:
        output.data = probabilities.ravel().tolist()
    header = (
        InferenceResponse(
            model_name=model.name, model_version=model.version, id=inference.id, outputs=[output]
        )
        .model_dump_json(exclude_none=True)
        .encode()
    )
    if output.data is not None:
        return Response(header, media_type="application/json")
    return Response(
        header + probabilities.astype("<f4").tobytes(),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


def _binary_output(inference: InferenceRequest) -> bool:
    """Whether `probabilities` goes back as binary: per requested output, or for all
    outputs by the request's `binary_data_output` parameter."""
    for requested in inference.outputs or []:
        if requested.name != OUTPUT_TENSOR:
            raise _bad(f"unknown output {requested.name!r}; this model has {OUTPUT_TENSOR!r}")
    if inference.outputs:
        return bool((inference.outputs[0].parameters or {}).get("binary_data", False))
    return bool((inference.parameters or {}).get("binary_data_output", False))


def _bad(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)
