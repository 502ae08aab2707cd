"""Real servers for the serve tests: uvicorn in a thread, or `imgcls serve` in a process."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from helpers import SAMPLES, cli_env

from imgcls.serve.app import create_app
from imgcls.serve.server import make_server
from imgcls.serve.service import ServeConfig

CAT = (SAMPLES / "cat.jpg").read_bytes()
ESPRESSO = (SAMPLES / "espresso.jpg").read_bytes()
CAT_LABELS = {"tiger cat", "tabby", "Egyptian cat"}
STARTUP_TIMEOUT_S = 120  # a model load on two busy cores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def thread_server(**settings) -> Iterator[str]:
    """An app for `ServeConfig(**settings)` under uvicorn in a thread; yields its base URL.
    Corrections go to a temporary directory unless `feedback_dir` is given."""
    with tempfile.TemporaryDirectory(prefix="imgcls-feedback-") as feedback_dir:
        settings.setdefault("feedback_dir", feedback_dir)
        with _thread_server(ServeConfig(port=free_port(), **settings)) as url:
            yield url


@contextmanager
def _thread_server(config: ServeConfig) -> Iterator[str]:
    server = make_server(create_app(config), config)  # as `imgcls serve` runs it
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def process_server(
    *args: str,
    log: Path | None = None,
    host: str = "127.0.0.1",
    launcher: tuple[str, ...] = ("-m", "imgcls"),
    env: dict[str, str] | None = None,
) -> Iterator[tuple[subprocess.Popen, str]]:
    """`python -m imgcls serve --host HOST --port P ARGS` in a subprocess (with `env`
    added to its environment), once /healthz answers on HOST.
    Without --log-db in ARGS it runs with --no-log, without --workers in one process, and
    without --feedback-dir it keeps corrections in a temporary directory: tests leave no
    files behind. Its output is piped
    (read it after the process ends) or, for long runs that would fill the pipe and block
    the server on its request log, written to the file `log`. `launcher` replaces
    `-m imgcls` (e.g. `-c CODE` that runs the CLI in a prepared interpreter)."""
    with tempfile.TemporaryDirectory(prefix="imgcls-feedback-") as feedback_dir:
        if "--log-db" not in args:
            args = (*args, "--no-log")
        if "--workers" not in args:
            args = (*args, "--workers", "1")
        if "--feedback-dir" not in args:
            args = (*args, "--feedback-dir", feedback_dir)
        with _process_server(args, log, host, launcher, env or {}) as running:
            yield running


@contextmanager
def _process_server(
    args: tuple[str, ...],
    log: Path | None,
    host: str,
    launcher: tuple[str, ...],
    env: dict[str, str],
) -> Iterator[tuple[subprocess.Popen, str]]:
    port = free_port()
    # The server's output goes to a file: a pipe nobody reads fills up (64 KB of access
    # lines) and then blocks the server's event loop on its next log line.
    output = open(log, "w") if log is not None else tempfile.TemporaryFile("w+")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, *launcher, "serve", "--host", host, "--port", str(port), *args],
        env=cli_env(**env),
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://{host}:{port}"
    try:
        wait_healthy(url, process, output)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        output.close()


def wait_healthy(url: str, process: subprocess.Popen, output=None) -> None:
    """Until `url` answers /healthz; RuntimeError with the server's `output` (a file it
    writes to, or its stdout pipe) if it exits first."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            if output is not None and output.readable():
                output.seek(0)
                said = output.read()
            else:
                said = process.stdout.read() if process.stdout else "(see its log file)"
            raise RuntimeError(f"server exited with {process.returncode}: {said}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become healthy")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0 when absent."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        sample, _, label_text = series.partition("{")
        found = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if sample == name and found == wanted:
            return float(value)
    return 0.0


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
