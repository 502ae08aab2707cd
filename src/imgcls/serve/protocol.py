"""uvicorn's httptools protocol with bounded request heads.

uvicorn times out an idle keep-alive connection (`timeout_keep_alive`) but nothing before
a request's headers are complete: a connection that opens and sends nothing, or sends its
headers a byte at a time (slowloris), is held open for ever, and llhttp keeps however
many header bytes arrive. Here the request line and headers must arrive within
`header_timeout_s` of the connection opening (or of the request's first byte on a
keep-alive connection) and within `max_header_bytes`, or the connection is closed.
The body's own bounds are in limits.py.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["bounded_http_protocol"]

log = logging.getLogger("imgcls.serve")

_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\ncontent-length: 33\r\n"
    b"connection: close\r\n\r\nrequest headers over the size cap"
)


def bounded_http_protocol(header_timeout_s: float, max_header_bytes: int) -> type:
    """An httptools protocol class (uvicorn's `http=` setting) with these bounds."""

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._head_timer: asyncio.TimerHandle | None = None
            self._head_bytes = self._head_raw = 0
            self._head_too_large = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_head()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._head_timer is None:  # the next request on a keep-alive connection
                self._start_head()

        def data_received(self, data: bytes) -> None:
            in_head = self._head_timer is not None
            super().data_received(data)
            if in_head and self._head_timer is not None:  # all of it was head: still no end
                self._head_raw += len(data)
                if self._head_raw > max_header_bytes:  # one endless header line, say
                    self._stop_head()
                    self._head_too_large = True
                    self.send_400_response("")

        def on_url(self, url: bytes) -> None:
            self._count_head(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count_head(len(name) + len(value) + 4)  # ": " and CRLF
            super().on_header(name, value)

        def send_400_response(self, msg: str) -> None:
            if not self._head_too_large:  # the parser's own complaint
                super().send_400_response(msg)
                return
            log.warning("%s: request headers over %d bytes", self.client, max_header_bytes)
            self.transport.write(_TOO_LARGE)
            self.transport.close()

        def _count_head(self, size: int) -> None:
            """Count the parsed head's bytes. Over the cap the parser is stopped (by a
            callback that raises), and the 400 uvicorn then sends becomes a 431."""
            self._head_bytes += size
            if self._head_bytes > max_header_bytes:
                self._head_too_large = True
                raise ValueError("request headers over the size cap")

        def on_headers_complete(self) -> None:
            self._stop_head()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head()
            super().connection_lost(exc)

        def _start_head(self) -> None:
            self._head_bytes = self._head_raw = 0
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_too_slow)

        def _stop_head(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return BoundedHttpToolsProtocol
