"""Requests/s and p99 latency of `imgcls serve --model-repository` while a new version
loads, warms and takes over (SIGHUP), against the same server in steady state.

    .venv/bin/python benchmarks/swap.py MODEL            # MODEL: a run directory or .onnx
    CLIENTS=4 SECONDS_PER_RUN=8 .venv/bin/python benchmarks/swap.py model.onnx

The server serves REPO/m/1 (a copy of MODEL); 4 client threads post samples/cat.jpg on
keep-alive connections. Steady and swap rounds alternate (ROUNDS of each); in a swap round,
2 s in, REPO/m/2 (another copy) appears and the server gets SIGHUP. The clients run on the
same machine as the server, so the rates are lower than a remote load would see; compare
the two columns with each other. Every answer must be a 200 (a failure stops the run).

Measured 2026-12-08, 2 cores (AMD EPYC Zen 4), other sessions' work running, EfficientNet-
Lite0 exported by `imgcls export` (ONNX Runtime, 224 px), CLIENTS=4, SECONDS_PER_RUN=8,
ROUNDS=2:  see docs/serve.md (Model repository) for the table.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
IMAGE = (REPO / "samples" / "cat.jpg").read_bytes()
CLIENTS = int(os.environ.get("CLIENTS", "4"))
SECONDS_PER_RUN = float(os.environ.get("SECONDS_PER_RUN", "8"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))


def _copy(model: Path, target: Path) -> None:
    if model.is_dir():
        shutil.copytree(model, target)
    else:
        target.mkdir(parents=True)
        shutil.copy(model, target / model.name)


def _load(url: str, seconds: float, during: threading.Event | None = None) -> list[float]:
    """Latencies (s) of every request CLIENTS threads complete in `seconds`."""
    latencies: list[float] = []
    failures: list[str] = []
    end = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=30) as session:
            while time.monotonic() < end:
                start = time.perf_counter()
                response = session.post(
                    f"{url}/v1/classify", content=IMAGE, headers={"content-type": "image/jpeg"}
                )
                if response.status_code != 200:
                    failures.append(response.text)
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    if during is not None:
        during.set()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"{len(failures)} failed requests, e.g. {failures[0]}")
    return latencies


def _summary(latencies: list[float], seconds: float) -> str:
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000
    return f"{len(latencies) / seconds:7.1f} req/s  p99 {p99:6.1f} ms"


def main() -> None:
    model = Path(sys.argv[1]).resolve()
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as probe:
        repo = Path(tmp) / "repo"
        _copy(model, repo / "m" / "1")
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        server = subprocess.Popen(
            [sys.executable, "-m", "imgcls", "serve", "--model-repository", str(repo)]
            + ["--port", str(port), "--no-log", "--drain-seconds", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    if httpx.get(f"{url}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.3)
            _load(url, 2)  # warm-up
            version = 1
            for _ in range(ROUNDS):
                steady = _load(url, SECONDS_PER_RUN)
                print(f"steady   {_summary(steady, SECONDS_PER_RUN)}", flush=True)
                started = threading.Event()
                version += 1

                def swap(version: int = version, started: threading.Event = started) -> None:
                    started.wait()
                    time.sleep(2)
                    _copy(model, repo / "m" / str(version))
                    server.send_signal(signal.SIGHUP)

                swapper = threading.Thread(target=swap)
                swapper.start()
                swapping = _load(url, SECONDS_PER_RUN, started)
                swapper.join()
                live = httpx.post(
                    f"{url}/v1/classify", content=IMAGE, headers={"content-type": "image/jpeg"}
                ).json()["model_version"]
                print(f"swap->v{live} {_summary(swapping, SECONDS_PER_RUN)}", flush=True)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
