"""The FastAPI app of `imgcls serve`: the REST routes (v1), health and metrics.

`create_app(config)` builds the app; the models load in its lifespan handler, so building
an app is cheap and a server answers only once its models are ready. Path functions parse
the request, call the `Service`, and return a typed response model.
"""

from __future__ import annotations

import base64
import logging
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from importlib import resources
from typing import Annotated, Any

import cv2
import uvicorn
from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from imgcls import __version__
from imgcls.errors import StartupError
from imgcls.serve import v2
from imgcls.serve.auth import ApiKeys, protect, resolve_auth
from imgcls.serve.deps import ServiceDep
from imgcls.serve.errors import ApiError, ErrorResponse, install_error_handlers
from imgcls.serve.limits import BodySizeLimitMiddleware
from imgcls.serve.metrics import CONTENT_TYPE_LATEST, Metrics, RequestMetricsMiddleware
from imgcls.serve.request_id import RequestIdMiddleware
from imgcls.serve.service import ServeConfig, ServedModel, Service

__all__ = ["StartupError", "create_app", "run"]

log = logging.getLogger("imgcls.serve")


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class ModelInfo(BaseModel):
    name: str
    num_classes: int
    input_size: list[int] = Field(description="[C, H, W] of the model input")
    backend: str


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


class FileResult(BaseModel):
    filename: str
    predictions: list[PredictionOut]
    labels: list[str] = Field(
        description="The classes the model asserts, best first (every present class, even "
        "beyond top_k); empty when the image is unknown."
    )


class ClassifyResponse(BaseModel):
    model: str
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


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse} for status in statuses}


# The upload is read from the stream by the path function (so the body cap applies while
# it streams), hence the request body is described here rather than by parameters.
_MULTIPART_BODY = {
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
_CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **_MULTIPART_BODY["requestBody"]["content"],
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

router = APIRouter()
_INDEX_HTML = (resources.files("imgcls.serve") / "static" / "index.html").read_text("utf-8")


@router.get("/healthz", response_model=Health, responses=_errors(503), tags=["health"])
async def healthz(service: ServiceDep) -> Health:
    """200 once the models are loaded."""
    if not service.ready:
        raise ApiError(503, "NotReady", "models are still loading")
    return Health(status="ok")


@router.get("/v1/models", response_model=ModelList, tags=["v1"])
async def list_models(service: ServiceDep) -> ModelList:
    """The served models; the first answers requests that name none."""
    return ModelList(models=[_model_info(model) for model in service.models.values()])


@router.post(
    "/v1/classify",
    response_model=ClassifyResponse,
    responses=_errors(400, 404, 413, 422, 503),
    openapi_extra=_CLASSIFY_BODY,
    tags=["v1"],
)
async def classify(
    request: Request,
    service: ServiceDep,
    top_k: Annotated[int, Query(ge=1, description="Predictions per image.")] = 5,
    model: Annotated[str | None, Query(description="Model name; default: the first.")] = None,
    min_score: Annotated[
        float | None,
        Query(
            ge=0.0,
            le=1.0,
            description="Mark an image unknown when its top score is below this "
            "(replaces the model's own rule).",
        ),
    ] = None,
) -> Response:
    """Top-k labels for each uploaded `file` (multipart; several `file` fields: a batch),
    or for one image sent as the raw body (`Content-Type: image/jpeg`, ...; its result's
    filename is empty)."""
    served = service.get(model)
    if _is_raw_image(request.headers.get("content-type", "")):
        files = [("", await _read_body(request))]
    else:
        files = await _read_files(request, max_files=service.config.max_queue)
    predictions = await service.classify_and_log(served, files, top_k=top_k, min_score=min_score)
    # A ClassifyResponse, written directly: built as models and validated once more by
    # FastAPI, a one-image answer took 41 µs of the event loop instead of 10.
    return JSONResponse(
        {
            "model": served.name,
            "results": [
                {"filename": name, **preds.to_dict()}
                for (name, _), preds in zip(files, predictions, strict=True)
            ],
        }
    )


@router.get(
    "/v1/models/{name}/labels",
    response_model=LabelList,
    responses=_errors(404),
    tags=["v1"],
)
async def list_labels(name: str, service: ServiceDep) -> LabelList:
    """The class names of a model (what `/v1/feedback` accepts as a label)."""
    served = service.get(name)
    return LabelList(model=served.name, labels=list(served.classifier.labels.names))


@router.post(
    "/v1/explain",
    response_model=ExplainResponse,
    responses={
        200: {"content": {"image/png": {}}, "description": "PNG, or JSON with format=json."},
        **_errors(400, 404, 413, 422),
    },
    openapi_extra=_MULTIPART_BODY,
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
    files = await _read_files(request, max_files=1)
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


@router.post(
    "/v1/feedback",
    response_model=FeedbackResponse,
    responses=_errors(400, 404, 413, 422),
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
    files, fields = await _read_form(request, max_files=1)
    label = fields.get("label", "").strip()
    if not label:
        raise ApiError(400, "BadRequest", "no 'label' field in the multipart body")
    [(name, data)] = files
    return FeedbackResponse(**await service.add_feedback(served, name, data, label))


@router.get("/", include_in_schema=False)
async def index(request: Request, service: ServiceDep) -> HTMLResponse:
    """The web page: pick or drop an image, see its top-5 as bars and its heat map (whose
    first computation starts now, in the background). Open to all when keys are required
    (the page asks for one); only a caller with the key (`?key=`) starts the warm-up."""
    keys = request.app.state.api_keys
    if keys is None or keys.accepts(request.query_params.get("key", "")):
        service.warm_explainer()
    return HTMLResponse(_INDEX_HTML)


@router.get("/metrics", include_in_schema=False)
async def metrics(service: ServiceDep) -> Response:
    """Prometheus text format."""
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def create_app(config: ServeConfig | None = None) -> FastAPI:
    """The service for `config`; its models load when the app starts (lifespan)."""
    config = config or ServeConfig()
    service = Service(config, Metrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            try:
                await service.load(stack)
            except Exception as exc:
                app.state.startup_error = exc
                raise
            log.info(
                "serving %s on http://%s:%d", ", ".join(service.models), config.host, config.port
            )
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
    app.include_router(router)
    app.include_router(v2.router)
    # Added last, runs first: every response has its request ID; requests are timed and
    # counted including a 401 or a 413; a request without its key is refused before its
    # body is read. With no keys there is no check at all.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=config.max_upload_bytes)
    if app.state.api_keys is not None:
        protect(app, app.state.api_keys, metrics_auth=config.metrics_auth)
    app.add_middleware(RequestMetricsMiddleware, metrics=service.metrics)
    app.add_middleware(RequestIdMiddleware)
    return app


def run(config: ServeConfig) -> None:
    """Serve until SIGTERM or Ctrl-C; in-flight requests finish first. Off loopback with
    no API key (and no `no_auth`), a key is generated first (auth.resolve_auth)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    listening = _bind(config.host, config.port)  # a taken port fails before models load
    config = replace(config, port=listening.getsockname()[1])  # --port 0: the one given
    app = create_app(resolve_auth(config))
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=None,
        )
    )
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again; with this
    # handler in place that second delivery is a no-op, so a drained server exits 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[listening])
    except SystemExit:  # how uvicorn reports a failed start-up (a model that cannot load)
        cause = app.state.startup_error
        if isinstance(cause, ModuleNotFoundError):  # the inference-only install: the CLI
            raise cause from None  # says which install has it
        raise StartupError(
            str(cause) if cause else "the server did not start (see the log above)"
        ) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        listening.close()


def _bind(host: str, port: int) -> socket.socket:
    """The server's socket, bound (uvicorn listens on it once the models are loaded)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as exc:
        listening.close()
        raise StartupError(
            f"`--host` {host} `--port` {port}: cannot listen there ({exc.strerror})"
        ) from None
    return listening


async def _read_files(request: Request, max_files: int) -> list[tuple[str, bytes]]:
    """The (filename, bytes) of each multipart `file` field, read under the body cap."""
    files, _ = await _read_form(request, max_files)
    return files


async def _read_form(
    request: Request, max_files: int
) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """The multipart `file` fields as (filename, bytes), 1 to `max_files` of them, and
    the other text fields by name."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raw = f", or one image as the body ({', '.join(RAW_IMAGE_TYPES)})"
        raise ApiError(
            400,
            "BadRequest",
            f"expected a multipart/form-data body with one or more 'file' fields"
            f"{raw if request.url.path == '/v1/classify' else ''}, "
            f"got content type {content_type or 'none'!r}",
        )
    async with request.form(max_files=max_files, max_fields=100) as form:
        files = []
        for value in form.getlist("file"):
            if isinstance(value, UploadFile):
                files.append((value.filename or "file", await value.read()))
            else:  # a plain form field: its text is the file
                files.append(("file", value.encode()))
        fields = {
            key: value
            for key, value in form.multi_items()
            if key != "file" and isinstance(value, str)
        }
    if not files:
        raise ApiError(400, "BadRequest", "no 'file' field in the multipart body")
    if len(files) > max_files:
        raise ApiError(
            400, "BadRequest", f"send at most {max_files} 'file' field(s), got {len(files)}"
        )
    return files, fields


def _is_raw_image(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type.startswith("image/") or media_type == "application/octet-stream"


async def _read_body(request: Request) -> bytearray:
    """The whole body, read as it streams in (under the body cap, see limits.py), into
    one buffer sized from Content-Length when the client sends it. Not copied again into
    `bytes`: decoding and hashing take any bytes-like object."""
    declared = request.headers.get("content-length", "")
    body = bytearray(int(declared)) if declared.isdigit() else bytearray()
    size = 0
    async for chunk in request.stream():
        end = size + len(chunk)
        body[size:end] = chunk  # the server stops a body at its Content-Length
        size = end
    del body[size:]
    return body


def _model_info(model: ServedModel) -> ModelInfo:
    return ModelInfo(
        name=model.name,
        num_classes=model.classifier.num_classes,
        input_size=list(model.input_size),
        backend=model.classifier.runtime.backend,
    )
