"""The labelling queue (`imgcls serve --label-queue FILE`): what the page's "to label" view
shows, one image at a time; answers go to POST /v1/feedback like any correction."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from imgcls.errors import DataError, StartupError
from imgcls.serve.errors import ApiError
from imgcls.serve.label_queue import LabelQueue
from imgcls.serve.schemas import error_responses

__all__ = ["load_queue", "router"]

router = APIRouter()


class QueueItemOut(BaseModel):
    id: int = Field(description="Its place in the queue; GET /v1/queue/{id}/image.")
    name: str = Field(description="The image's file name.")


class QueueResponse(BaseModel):
    total: int = Field(description="Images in the queue file.")
    remaining: list[QueueItemOut] = Field(description="Those not answered yet, in order.")


async def load_queue(app, path: str | None, feedback_root: str) -> None:
    """Read the queue at start-up: a bad file stops the server with its reason."""
    app.state.label_queue = None
    if path is None:
        return
    try:
        app.state.label_queue = await run_in_threadpool(LabelQueue, path, feedback_root)
    except (DataError, OSError) as exc:
        raise StartupError(f"--label-queue {path}: {exc}") from None


def _queue(request: Request) -> LabelQueue:
    queue = request.app.state.label_queue
    if queue is None:
        raise ApiError(
            404, "NotFound", "no labelling queue: start the server with --label-queue FILE "
            "(a label file from imgcls select)",
        )  # fmt: skip
    return queue


@router.get("/v1/queue", response_model=QueueResponse, responses=error_responses(404), tags=["v1"])
async def queue(request: Request) -> QueueResponse:
    """The images of the labelling queue that no one has answered yet."""
    label_queue = _queue(request)
    remaining = await run_in_threadpool(label_queue.remaining)
    return QueueResponse(
        total=len(label_queue.items),
        remaining=[QueueItemOut(id=item.id, name=item.path.name) for item in remaining],
    )


@router.get(
    "/v1/queue/{item_id}/image",
    responses={200: {"content": {"image/*": {}}}, **error_responses(404)},
    tags=["v1"],
)
async def queue_image(request: Request, item_id: int) -> Response:
    """One queued image, as its file."""
    item = _queue(request).get(item_id)
    if item is None:
        raise ApiError(404, "NotFound", f"no queue item {item_id}")
    try:
        data = await run_in_threadpool(item.path.read_bytes)
    except OSError as exc:
        raise ApiError(404, "NotFound", f"queue item {item_id}: {exc.strerror or exc}") from None
    return Response(data, media_type=item.media_type)
