"""Running the app: bind the socket first, then uvicorn until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import signal
import socket
from dataclasses import replace

import uvicorn

from imgcls.errors import StartupError
from imgcls.serve.app import create_app
from imgcls.serve.auth import resolve_auth
from imgcls.serve.service import ServeConfig


def run(config: ServeConfig) -> None:
    """Serve until SIGTERM or Ctrl-C; in-flight requests finish first. Off loopback with
    no API key (and no `no_auth`), a key is generated first (auth.resolve_auth)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    listening = bind_socket(config.host, config.port)  # a taken port fails before models load
    config = replace(config, port=listening.getsockname()[1])  # --port 0: the one given
    app = create_app(resolve_auth(config))
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=None,
        )
    )
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again; with this
    # handler in place that second delivery is a no-op, so a drained server exits 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[listening])
    except SystemExit:  # how uvicorn reports a failed start-up (a model that cannot load)
        cause = app.state.startup_error
        if isinstance(cause, ModuleNotFoundError):  # the inference-only install: the CLI
            raise cause from None  # says which install has it
        raise StartupError(
            str(cause) if cause else "the server did not start (see the log above)"
        ) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        listening.close()


def bind_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound (uvicorn listens on it once the models are loaded)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as exc:
        listening.close()
        raise StartupError(
            f"`--host` {host} `--port` {port}: cannot listen there ({exc.strerror})"
        ) from None
    return listening
