"""The process's signals: SIGTERM drains the way Kubernetes needs, SIGHUP rescans.

On SIGTERM readiness answers 503 at once (the Service's `draining`), so the endpoints
controller takes the pod out of rotation while the listener still accepts and answers for
`drain_s`; answers say `Connection: close` meanwhile, so clients reconnect elsewhere. Then
uvicorn's graceful shutdown lets in-flight requests finish, for whatever is left of
`graceful_timeout_s`, cancels the rest, and the lifespan closes the batchers and flushes the
prediction log. A watchdog ends the process if all that has not finished by
`graceful_timeout_s` after the signal, whatever clients do. A second SIGTERM, or Ctrl-C,
stops without the drain. SIGHUP never kills the server: it calls `on_hangup` (a model
repository rescan).

Everything here is per process: with pre-forked workers, a parent forwards SIGTERM and
SIGHUP to each worker, and each drains and rescans on its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Generator
from contextlib import contextmanager
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DrainingServer", "KeepAliveOffMiddleware", "exit_drained", "graceful_shutdown_s"]

log = logging.getLogger("imgcls.serve")

WATCHDOG_GRACE_S = 1.0  # past the graceful timeout, for the lifespan's flush to end


def graceful_shutdown_s(drain_s: float, graceful_timeout_s: float) -> float:
    """uvicorn's `timeout_graceful_shutdown`: what the drain leaves of the graceful timeout,
    less a second for the lifespan (batchers, the log's flush)."""
    return max(graceful_timeout_s - drain_s - 1.0, 0.5)


class DrainingServer(uvicorn.Server):
    """`uvicorn.Server` with the drain and SIGHUP described above. `on_drain()` and
    `on_hangup()` are called on the event loop's thread."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        drain_s: float,
        graceful_timeout_s: float,
        on_drain: Callable[[], None],
        on_hangup: Callable[[], None],
    ) -> None:
        super().__init__(config)
        self.drain_s = drain_s
        self.graceful_timeout_s = graceful_timeout_s
        self.on_drain = on_drain
        self.on_hangup = on_hangup
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals can only be handled in the main thread (tests in a thread)
            return
        previous = signal.signal(signal.SIGHUP, self._hangup)
        try:
            with super().capture_signals():
                yield
        finally:
            signal.signal(signal.SIGHUP, previous)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self.draining or self._loop is None:
            super().handle_exit(sig, frame)  # Ctrl-C, a second SIGTERM: stop now
            return
        self.draining = True
        watchdog = threading.Timer(self.graceful_timeout_s + WATCHDOG_GRACE_S, self._overdue)
        watchdog.daemon = True  # a server that ended in time exits without waiting for it
        watchdog.start()
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        log.info(
            "SIGTERM: readiness now answers 503; still serving for %g s, then in-flight "
            "requests get until %g s after the signal",
            self.drain_s,
            self.graceful_timeout_s,
        )
        self.on_drain()
        asyncio.get_running_loop().call_later(self.drain_s, self._stop)

    def _stop(self) -> None:
        log.info("drain over: the listener closes")
        self.should_exit = True

    def _hangup(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.on_hangup)

    def _overdue(self) -> None:
        log.error(
            "still running %g s after SIGTERM: exiting now (--graceful-timeout)",
            self.graceful_timeout_s,
        )
        logging.shutdown()
        os._exit(1)


def exit_drained() -> None:
    """End the process now, with status 0, once a drained server has returned: the
    requests are answered, the prediction log flushed and closed. The interpreter's own
    teardown (clearing ONNX Runtime's, OpenCV's and maybe PyTorch's modules) is skipped:
    on two busy cores it took 6 to 12 s, past any graceful timeout."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class KeepAliveOffMiddleware:
    """While `is_draining()`, every answer says `Connection: close`: a client's next request
    opens a new connection, which the load balancer sends to a pod that is staying."""

    def __init__(self, app: ASGIApp, is_draining: Callable[[], bool]) -> None:
        self.app = app
        self.is_draining = is_draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.is_draining():
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
            await send(message)

        await self.app(scope, receive, send_closing)
