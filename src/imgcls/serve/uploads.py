"""Reading uploads: multipart file fields and raw image bodies, as they stream in under the
body cap."""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile

from imgcls.serve.errors import ApiError
from imgcls.serve.schemas import RAW_IMAGE_TYPES


async def read_files(request: Request, max_files: int) -> list[tuple[str, bytes]]:
    """The (filename, bytes) of each multipart `file` field, read under the body cap."""
    files, _ = await read_form(request, max_files)
    return files


async def read_form(
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


def is_raw_image(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type.startswith("image/") or media_type == "application/octet-stream"


async def read_body(request: Request) -> bytearray:
    """The whole body, appended chunk by chunk as it streams in (under the body cap and
    its timeouts, see limits.py). Never sized from Content-Length: a client that declares
    20 MB and sends 2 bytes costs 2 bytes. Not copied again into `bytes`: decoding and
    hashing take any bytes-like object."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
    return body
