"""Keep-alive connections spread over the workers: a crowded worker closes its connection."""

from __future__ import annotations

import asyncio

import httpx
from starlette.types import Receive, Scope, Send

from imgcls.serve.balance import RebalanceMiddleware
from imgcls.serve.inflight import InFlight


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _connection_header(in_flight: InFlight) -> str | None:
    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(RebalanceMiddleware(_ok, in_flight))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/")

    return asyncio.run(get()).headers.get("connection")


def test_a_worker_with_two_more_images_in_flight_than_another_closes_the_connection() -> None:
    slots = InFlight.shared(2)
    mine, other = InFlight(slots, 0), InFlight(slots, 1)
    with mine.holding(3), other.holding(1):
        assert mine.crowded() and _connection_header(mine) == "close"
        assert not other.crowded() and _connection_header(other) is None
    with mine.holding(2), other.holding(1):  # one more: even enough
        assert _connection_header(mine) is None


def test_one_worker_never_closes_for_balance() -> None:
    alone = InFlight()
    with alone.holding(50):
        assert not alone.crowded() and _connection_header(alone) is None
