"""Running the app: bind the socket first, then uvicorn until SIGTERM or Ctrl-C, in this
process or in worker processes that share the socket (serve/workers.py). The drain and
SIGHUP: lifecycle.py; the bounds on request heads: protocol.py."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import uvicorn
from fastapi import FastAPI

from imgcls.errors import StartupError
from imgcls.serve.app import create_app
from imgcls.serve.auth import resolve_auth
from imgcls.serve.inflight import InFlight
from imgcls.serve.lifecycle import DrainingServer, exit_drained, graceful_shutdown_s
from imgcls.serve.protocol import bounded_http_protocol
from imgcls.serve.service import ServeConfig
from imgcls.serve.workers import LOG_FORMAT, Supervisor, default_workers


def run(config: ServeConfig) -> None:
    """Serve until SIGTERM (drained, see lifecycle.py) or Ctrl-C. Off loopback with no API
    key (and no `no_auth`), a key is generated first (auth.resolve_auth), one for every
    worker. `config.workers` processes serve (None: `default_workers`)."""
    workers = config.workers or default_workers(config)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s" if workers == 1 else LOG_FORMAT,
    )
    listening = bind_socket(config.host, config.port)  # a taken port fails before models load
    config = replace(config, port=listening.getsockname()[1], workers=workers)  # --port 0
    try:
        config = resolve_auth(config)
        if workers == 1:
            serve_socket(config, listening)
        else:
            Supervisor(config, listening, serve_socket).run()
    finally:
        listening.close()


def serve_socket(
    config: ServeConfig,
    listening: socket.socket,
    in_flight: InFlight | None = None,
    on_started: Callable[[], None] | None = None,
) -> None:
    """The app for `config` under uvicorn on `listening`, until SIGTERM (then drained and
    the process ended, lifecycle.py); `on_started()` once it accepts requests."""
    app = create_app(config, in_flight)
    server = make_server(app, config)
    if on_started is not None:
        threading.Thread(target=_tell_started, args=(server, on_started), daemon=True).start()
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again; with this
    # handler in place that second delivery is a no-op, so a drained server exits 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[listening])
        if server.draining:
            exit_drained()
    except SystemExit:  # how uvicorn reports a failed start-up (a model that cannot load)
        cause = app.state.startup_error
        if isinstance(cause, ModuleNotFoundError):  # the inference-only install: the CLI
            raise cause from None  # says which install has it
        raise StartupError(
            str(cause) if cause else "the server did not start (see the log above)"
        ) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _tell_started(server: uvicorn.Server, on_started: Callable[[], None]) -> None:
    while not server.started:  # uvicorn's flag: set once the app's lifespan has started
        if server.should_exit:
            return
        time.sleep(0.05)
    on_started()


def make_server(app: FastAPI, config: ServeConfig) -> DrainingServer:
    """uvicorn for `app` with the timeouts and bounds of `config`, draining on SIGTERM
    and rescanning the model repository on SIGHUP (one per process)."""
    service = app.state.service
    return DrainingServer(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            http=bounded_http_protocol(config.header_timeout_s, config.max_header_bytes),
            timeout_keep_alive=config.keep_alive_s,
            timeout_graceful_shutdown=graceful_shutdown_s(
                config.drain_s, config.graceful_timeout_s
            ),
            log_config=None,
            access_log=False,
        ),
        drain_s=config.drain_s,
        graceful_timeout_s=config.graceful_timeout_s,
        on_drain=service.start_drain,
        on_hangup=service.rescan_soon,
    )


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
