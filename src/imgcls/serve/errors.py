"""Every error the service answers with, as JSON, never as a bare 500 page.

REST routes answer `{"error": {"type": ..., "message": ...}}` (INTERFACE.md); the Open
Inference Protocol routes under /v2 answer `{"error": "<message>"}`, the shape that
protocol defines and `tritonclient` reads. Both also carry `"request_id"`, the request's
`X-Request-ID` (request_id.py), beside `"error"`.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from imgcls.errors import (
    ImageError,
    NotExplainable,
    Overloaded,
    RequestError,
    StorageFull,
    UnknownLabel,
    UnknownModel,
)
from imgcls.serve.request_id import HEADER as REQUEST_ID_HEADER
from imgcls.serve.request_id import current_request_id

__all__ = [
    "ApiError",
    "ErrorDetail",
    "ErrorResponse",
    "domain_error",
    "REQUEST_ID_DOC",
    "RETRY_AFTER_S",
    "error_response",
    "install_error_handlers",
]

log = logging.getLogger("imgcls.serve")


class ErrorDetail(BaseModel):
    type: str
    message: str


REQUEST_ID_DOC = "The request's X-Request-ID, as in the server's log."


class ErrorResponse(BaseModel):
    error: ErrorDetail
    request_id: str = Field(description=REQUEST_ID_DOC)


class ApiError(Exception):
    """An error answered to the client: HTTP `status`, a short `type` and a message."""

    def __init__(
        self, status: int, type: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.headers = headers


RETRY_AFTER_S = 1  # what a 503 tells clients to wait

# The service raises domain errors; this is the one place they meet HTTP status codes.
_DOMAIN_STATUS: dict[type[Exception], tuple[int, str]] = {
    RequestError: (400, "BadRequest"),
    UnknownModel: (404, "ModelNotFound"),
    ImageError: (422, "ImageError"),
    UnknownLabel: (422, "UnknownLabel"),
    NotExplainable: (422, "NotExplainable"),
    Overloaded: (503, "Overloaded"),
    StorageFull: (507, "InsufficientStorage"),
}


def domain_error(exc: Exception) -> ApiError:
    """The HTTP answer to a domain error the service raised."""
    status, kind = next(_DOMAIN_STATUS[c] for c in type(exc).__mro__ if c in _DOMAIN_STATUS)
    if isinstance(exc, Overloaded):
        message = f"server busy ({exc}); retry in {RETRY_AFTER_S}s"
        return ApiError(status, kind, message, headers={"Retry-After": str(RETRY_AFTER_S)})
    return ApiError(status, kind, str(exc))


_STATUS_TYPES = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "UnprocessableEntity",
    503: "Overloaded",
}


def error_response(path: str, error: ApiError) -> JSONResponse:
    """The JSON response for `error` on a request to `path` (which decides the shape)."""
    if path.startswith("/v2"):
        content: dict = {"error": error.message}
    else:
        content = {"error": {"type": error.type, "message": error.message}}
    content["request_id"] = current_request_id()
    return JSONResponse(content, status_code=error.status, headers=error.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure — ours, FastAPI's validation, routing's 404/405 — to JSON."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request.url.path, exc)

    async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request.url.path, domain_error(exc))

    for kind in _DOMAIN_STATUS:
        app.add_exception_handler(kind, _domain_error)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        return error_response(request.url.path, ApiError(400, "ValidationError", problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _STATUS_TYPES.get(exc.status_code, "HTTPError")
        error = ApiError(exc.status_code, kind, str(exc.detail), dict(exc.headers or {}))
        return error_response(request.url.path, error)

    @app.exception_handler(ClientDisconnect)
    async def _client_left(request: Request, exc: ClientDisconnect) -> Response:
        # The client hung up while sending its upload (a timeout, a closed tab): nobody is
        # left to answer and nothing failed here. nginx's 499 says so in logs and metrics.
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = current_request_id()
        log.exception(
            "unexpected error on %s %s (request %s)", request.method, request.url.path, request_id
        )
        # This handler answers outside the middleware (Starlette runs it outermost), so
        # the request ID header is added here. The exception's text stays in the log: it
        # can name files, settings or data the client has no business seeing.
        error = ApiError(
            500,
            "InternalError",
            f"internal server error; the server's log has the details under request ID "
            f"{request_id}",
            headers={REQUEST_ID_HEADER: request_id},
        )
        return error_response(request.url.path, error)
