"""The request body cap, enforced before the body is in memory.

A declared Content-Length over the cap is refused before a byte of the body is read; a
body without one (chunked) is counted as it streams in, and the read that crosses the cap
raises, so the app never holds more than the cap plus one network chunk.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgcls.serve.errors import ApiError, error_response

__all__ = ["BodySizeLimitMiddleware"]


class BodySizeLimitMiddleware:
    """Answers 413 to any HTTP request whose body is over `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(scope["path"], self._too_large(f"{int(declared):,}"))
            await response(scope, receive, send)
            return

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large(f"over {self.max_bytes:,}")
            return message

        await self.app(scope, counting_receive, send)

    def _too_large(self, size: str) -> ApiError:
        limit_mb = self.max_bytes / 1_000_000
        return ApiError(
            413,
            "PayloadTooLarge",
            f"request body of {size} bytes is over the limit of {limit_mb:g} MB "
            "(the server's --max-upload-mb)",
        )
