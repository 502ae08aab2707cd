"""The request body's bounds, enforced while it streams in: its size and its pace.

A declared Content-Length over the cap is refused before a byte of the body is read; a
body without one (chunked) is counted as it streams in, and the read that crosses the cap
raises, so the app never holds more than the cap plus one network chunk. A body that stops
arriving (no bytes for `idle_timeout_s`) or takes longer than `timeout_s` in all is
answered 408, so a stalled or trickling client holds a connection for a bounded time.
Numbers in headers are read as ASCII digits only (`ascii_count`).
"""

from __future__ import annotations

import asyncio
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgcls.serve.errors import ApiError, error_response

__all__ = ["BodyLimitMiddleware", "ascii_count"]

# At most 18 digits: any byte count a body could have, and int() stays cheap.
_ASCII_DIGITS = re.compile(r"[0-9]{1,18}")
_CLOSE = {"Connection": "close"}  # the rest of the body is not read: the connection ends


def ascii_count(value: str | bytes | None) -> int | None:
    """`value` as a non-negative integer when it is 1 to 18 ASCII digits, else None.
    (`str.isdigit` accepts "²" and other Unicode digits that `int` then refuses.)"""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return int(value) if _ASCII_DIGITS.fullmatch(value) else None


class BodyLimitMiddleware:
    """Answers 413 to a body over `max_bytes`, 408 to one too slow to arrive."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, idle_timeout_s: float, timeout_s: float
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.idle_timeout_s = idle_timeout_s
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = ascii_count(dict(scope["headers"]).get(b"content-length"))
        if declared is not None and declared > self.max_bytes:
            response = error_response(scope["path"], self._too_large(f"{declared:,}"))
            await response(scope, receive, send)
            return

        received = 0
        complete = False  # then a receive waits for the disconnect, unbounded
        deadline = time.monotonic() + self.timeout_s

        async def bounded_receive() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()
            wait = min(self.idle_timeout_s, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.0))
            except TimeoutError:
                raise self._too_slow(received) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large(f"over {self.max_bytes:,}")
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, bounded_receive, send)

    def _too_large(self, size: str) -> ApiError:
        limit_mb = self.max_bytes / 1_000_000
        return ApiError(
            413,
            "PayloadTooLarge",
            f"request body of {size} bytes is over the limit of {limit_mb:g} MB "
            "(the server's --max-upload-mb)",
            headers=_CLOSE,
        )

    def _too_slow(self, received: int) -> ApiError:
        return ApiError(
            408,
            "RequestTimeout",
            f"the request body stopped arriving ({received:,} bytes received): the server "
            f"waits {self.idle_timeout_s:g} s for more bytes and {self.timeout_s:g} s for "
            "the whole body",
            headers=_CLOSE,
        )
