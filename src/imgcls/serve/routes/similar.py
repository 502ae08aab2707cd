"""Similar images: the indexed images nearest an upload (`imgcls serve --index INDEX`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from imgcls.data.images import decode_image_bytes
from imgcls.errors import DataError, StartupError
from imgcls.serve.errors import ApiError
from imgcls.serve.schemas import CLASSIFY_BODY, error_responses
from imgcls.serve.uploads import is_raw_image, read_body, read_files

__all__ = ["load_index", "router"]

router = APIRouter()


class NeighbourOut(BaseModel):
    path: str = Field(description="The indexed image, relative to the indexed folder.")
    label: str = Field(description="Its class folder or label-file label; '' for none.")
    similarity: float = Field(description="Cosine similarity of the embeddings (1: the same).")


class SimilarResult(BaseModel):
    filename: str
    neighbours: list[NeighbourOut]


class SimilarResponse(BaseModel):
    index: str = Field(description="The index folder the server was started with.")
    model: str = Field(description="The model whose embeddings the index holds.")
    results: list[SimilarResult]


async def load_index(app, path: str | None, max_pixels: int) -> None:
    """Open the index at `path` (and its model) for /v1/similar, at start-up: a bad index
    stops the server with its reason instead of failing every request."""
    app.state.similar_index = None
    if path is None:
        return
    # deferred: faiss and the index's model load only for a server started with --index
    from imgcls.inference.classifier import ImageClassifier
    from imgcls.similar import EmbeddingIndex

    def load():
        index = EmbeddingIndex(path)
        index.classifier = ImageClassifier(index.model, max_pixels=max_pixels)
        return index

    try:
        app.state.similar_index = await run_in_threadpool(load)
    except (DataError, OSError) as exc:
        raise StartupError(f"--index {path}: {exc}") from None


def _search(index, name: str, data: bytes, k: int):
    classifier = index.classifier
    image = decode_image_bytes(
        data,
        name=name or "request body",  # a raw-body upload has no file name
        max_pixels=classifier.max_pixels,
        min_side=classifier.preprocess.resize_size,
    )
    return index.search(image, k)


@router.post(
    "/v1/similar",
    response_model=SimilarResponse,
    responses=error_responses(400, 404, 413, 422),
    openapi_extra=CLASSIFY_BODY,
    tags=["v1"],
)
async def similar(
    request: Request,
    k: Annotated[int, Query(ge=1, le=1000, description="Neighbours per image.")] = 10,
) -> SimilarResponse:
    """The `k` indexed images most like each uploaded `file` (multipart, one or several;
    or one image as the raw body), most similar first."""
    index = request.app.state.similar_index
    if index is None:
        raise ApiError(404, "NotFound", "no index: start the server with --index INDEX")
    if is_raw_image(request.headers.get("content-type", "")):
        files = [("", bytes(await read_body(request)))]
    else:
        files = await read_files(request, max_files=16)
    results = []
    for name, data in files:
        found = await run_in_threadpool(_search, index, name, data, k)
        neighbours = [NeighbourOut(**n.to_dict()) for n in found]
        results.append(SimilarResult(filename=name, neighbours=neighbours))
    return SimilarResponse(index=str(index.path), model=index.model, results=results)
