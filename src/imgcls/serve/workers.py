"""`imgcls serve --workers N`: worker processes sharing one listening socket.

The parent binds the socket, then starts N worker processes (spawned: fresh interpreters,
so no thread pool or model state is copied by a fork). Each runs the whole server —
uvicorn, FastAPI, its own copy of the models, its own batcher — on that one socket, and
the kernel hands every new connection to one of them. One Python process shares one GIL
between its event loop, the multipart parsing, JSON and the glue; N processes do not
(measured: docs/performance.md). The parent loads no model. It

- makes the directory of prometheus_client's multiprocess mode, so that `/metrics` from
  any worker shows the totals of all (serve/metrics.py), and removes it at the end;
- creates the prediction log before the workers open it (each writes its rows from its
  own thread; SQLite's WAL and busy timeout let them take turns);
- gives the workers shared counters of the images they have in flight
  (serve/inflight.py), so that a lone request's batch takes every core;
- waits for every worker to load its models, and raises a worker's start-up error (a
  model that cannot load) as its own;
- starts a new worker when one dies;
- on SIGTERM or SIGINT sends SIGTERM to every worker, which finishes the requests it
  has in flight, and returns once all have exited;
- passes SIGHUP on to every worker (ignored there unless the app handles it).

A worker whose parent dies (killed with SIGKILL) stops too, after its requests in flight.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from prometheus_client import multiprocess

from imgcls.errors import StartupError
from imgcls.serve.inflight import InFlight
from imgcls.serve.postgres_log import is_postgres_url
from imgcls.serve.service import ServeConfig, open_prediction_log

__all__ = ["LOG_FORMAT", "Supervisor", "Target", "default_workers"]

log = logging.getLogger("imgcls.serve")

# Each line says which process wrote it.
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(message)s"
POLL_S = 0.2  # how often the parent looks at its signals between worker events

# What a worker runs: serve `config` on the bound socket until SIGTERM, counting its
# images in flight in the given InFlight and calling `on_started` once it accepts requests.
Target = Callable[[ServeConfig, socket.socket, InFlight, Callable[[], None]], None]


def default_workers(config: ServeConfig) -> int:
    """One worker per core on the CPU with ONNX Runtime; one with PyTorch or on a GPU,
    where one process's batcher fills the device (docs/performance.md)."""
    if config.device == "cpu" and config.backend in ("auto", "onnx"):
        return len(os.sched_getaffinity(0))
    return 1


class _Worker:
    """One worker process, its slot among the workers and its pipe to the parent."""

    def __init__(self, index: int, process: BaseProcess, channel: Connection) -> None:
        self.index = index
        self.process = process
        self.channel = channel  # the worker says "ready" or why it failed; EOF when it ends
        self.ready = False

    def __str__(self) -> str:
        return f"worker {self.index + 1} (pid {self.process.pid})"


class Supervisor:
    """Runs `target` in `config.workers` processes on `listening` (see the module)."""

    def __init__(self, config: ServeConfig, listening: socket.socket, target: Target) -> None:
        self.config = config
        self.listening = listening
        self.target = target
        self.count = config.workers or 1
        self._context = multiprocessing.get_context("spawn")
        self._slots = InFlight.shared(self.count)
        self._signals: list[int] = []
        self._workers: list[_Worker] = []

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain every worker. Raises StartupError
        (or the worker's own error) when a worker cannot start."""
        metrics_dir = tempfile.mkdtemp(prefix="imgcls-metrics-")
        previous_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # the workers inherit it
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            log_db = self.config.log_db
            if log_db is not None and not is_postgres_url(log_db):  # made before workers race
                open_prediction_log(log_db).close()
            self.listening.listen(2048)  # uvicorn's backlog; connections wait for a worker
            self._workers = [self._start(index) for index in range(self.count)]
            self._supervise()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._stop()
            if previous_dir is None:
                os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            else:
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = previous_dir
            shutil.rmtree(metrics_dir, ignore_errors=True)

    def _on_signal(self, sig: int, frame: object) -> None:
        self._signals.append(sig)

    def _start(self, index: int) -> _Worker:
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main,
            args=(self.target, self.config, self.listening, self._slots, index, child_end),
            name=f"imgcls-worker-{index + 1}",
        )
        process.start()
        child_end.close()  # the worker's end lives in the worker only: EOF when it ends
        return _Worker(index, process, parent_end)

    def _supervise(self) -> None:
        announced = False
        while True:
            while self._signals:
                sig = self._signals.pop(0)
                if sig == signal.SIGHUP:
                    log.info("SIGHUP: passed on to the %d workers", len(self._workers))
                    self._send(signal.SIGHUP)
                    continue
                log.info(
                    "%s: the %d workers finish their requests in flight, then stop",
                    signal.Signals(sig).name,
                    len(self._workers),
                )
                return
            events = wait([worker.channel for worker in self._workers], timeout=POLL_S)
            for channel in events:
                worker = next(w for w in self._workers if w.channel is channel)
                self._handle(worker)
            if not announced and all(worker.ready for worker in self._workers):
                announced = True
                host, port = self.listening.getsockname()[:2]
                log.info("%d workers serving on http://%s:%d", self.count, host, port)

    def _handle(self, worker: _Worker) -> None:
        """A message from `worker`, or its end."""
        try:
            message = worker.channel.recv()
        except EOFError:  # it exited
            worker.process.join()
            self._replace(worker)
            return
        if message[0] == "ready":
            worker.ready = True
            log.info("%s ready", worker)
        else:  # ("failed", error): the models cannot load, nor will they on a restart
            worker.process.join()
            raise message[1]

    def _replace(self, worker: _Worker) -> None:
        code = worker.process.exitcode
        if not worker.ready:
            raise StartupError(f"{worker} exited with code {code} before it could serve")
        multiprocess.mark_process_dead(worker.process.pid)  # its live gauges go
        self._slots[worker.index] = 0  # its requests in flight went with it
        worker.channel.close()
        log.warning("%s exited with code %s; starting another", worker, code)
        index = self._workers.index(worker)
        self._workers[index] = self._start(worker.index)

    def _send(self, sig: int) -> None:
        for worker in self._workers:
            if worker.process.exitcode is None:
                os.kill(worker.process.pid, sig)

    def _stop(self) -> None:
        """SIGTERM to every worker, then wait for each to finish its requests."""
        self._send(signal.SIGTERM)
        for worker in self._workers:
            worker.process.join()
            worker.channel.close()
            log.info("%s stopped (exit code %s)", worker, worker.process.exitcode)


def _worker_main(
    target: Target,
    config: ServeConfig,
    listening: socket.socket,
    slots: object,
    index: int,
    channel: Connection,
) -> None:
    """A worker process: serve, then exit 0 once drained."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    # Ctrl-C reaches every process of the terminal's group; the parent answers it with a
    # SIGTERM to each worker, which drains. SIGHUP is the app's to handle, if it does.
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    threading.Thread(target=_stop_with_parent, args=(channel,), daemon=True).start()
    started = threading.Event()

    def on_started() -> None:
        started.set()
        channel.send(("ready",))

    try:
        target(config, listening, InFlight(slots, index), on_started)
    except Exception as exc:
        if started.is_set():
            raise  # a worker that served and failed: the parent starts another
        channel.send(("failed", exc))  # raised by the parent as the server's start-up error
        sys.exit(3)


def _stop_with_parent(channel: Connection) -> None:
    """Wait for the parent's end of the pipe to close (the parent never writes to it);
    if the parent is gone, stop this worker as SIGTERM does."""
    with contextlib.suppress(EOFError, OSError):
        channel.recv()
    os.kill(os.getpid(), signal.SIGTERM)
