"""HEAD answered wherever GET is: FastAPI routes take only the methods they name, and
load balancers, uptime checks and `curl -I` probe with HEAD."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["HeadAsGetMiddleware"]


class HeadAsGetMiddleware:
    """Runs a HEAD request as a GET. The server still sees HEAD in its own scope, so it
    sends the GET's status and headers (Content-Length included) and drops the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        as_get = {**scope, "method": "GET"}
        try:
            await self.app(as_get, receive, send)
        finally:  # the route found, for the metrics that middleware further out keeps
            if "route" in as_get:
                scope["route"] = as_get["route"]
