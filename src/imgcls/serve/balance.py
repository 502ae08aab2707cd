"""Keep-alive connections spread over the worker processes.

The kernel gives each new connection to one worker, and a keep-alive client (a load
balancer, a proxy, wrk) then sends all its requests down it: 16 connections may sit 10
on one worker and 6 on the other, and the requests of the 10 wait while the other
worker has cores to spare. So a worker with clearly more images in flight than the least
busy one answers with `Connection: close`: the client opens a new connection, which the
idler worker is the likelier to accept. A close costs a TCP handshake (measured:
docs/performance.md).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgcls.serve.inflight import InFlight

__all__ = ["RebalanceMiddleware"]


class RebalanceMiddleware:
    """Adds `Connection: close` to a response when this worker is crowded
    (`InFlight.crowded`)."""

    def __init__(self, app: ASGIApp, in_flight: InFlight) -> None:
        self.app = app
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_or_close(message: Message) -> None:
            if message["type"] == "http.response.start" and self.in_flight.crowded():
                message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        await self.app(scope, receive, send_or_close)
