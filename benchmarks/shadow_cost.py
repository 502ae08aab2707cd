"""What a shadow version costs the server: core-ms per live request (the process's CPU
time over the requests answered) with no shadow, a shadow on 10% and on 100% of requests.

    .venv/bin/python benchmarks/shadow_cost.py MODEL     # MODEL: a run directory or .onnx
    CLIENTS=4 REQUESTS=400 ROUNDS=2 .venv/bin/python benchmarks/shadow_cost.py model.onnx

One server serves REPO/m/1 with REPO/m/2 (a copy) as its shadow, set by policy.json and
SIGHUP between runs; the configurations alternate for ROUNDS rounds. Clients post
samples/cat.jpg on keep-alive connections; CPU time is read from /proc/PID/stat (Linux).
Core-ms per request barely moves with the machine's other load, unlike requests/s.

Measured 2026-12-08, 2 cores (AMD EPYC Zen 4), other sessions' tests running, EfficientNet-
Lite0 exported by `imgcls export`, CLIENTS=4, REQUESTS=400, ROUNDS=2: see docs/serve.md.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
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
REQUESTS = int(os.environ.get("REQUESTS", "400"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / TICKS  # utime + stime


def _copy(model: Path, target: Path) -> None:
    if model.is_dir():
        shutil.copytree(model, target)
    else:
        target.mkdir(parents=True)
        shutil.copy(model, target / model.name)


def _load(url: str) -> None:
    left = [REQUESTS]
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=30) as session:
            while True:
                with lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                response = session.post(
                    f"{url}/v1/classify", content=IMAGE, headers={"content-type": "image/jpeg"}
                )
                if response.status_code != 200:
                    raise SystemExit(f"failed request: {response.text}")

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main() -> None:
    model = Path(sys.argv[1]).resolve()
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as probe:
        repo = Path(tmp) / "repo"
        _copy(model, repo / "m" / "1")
        _copy(model, repo / "m" / "2")
        policy = repo / "m" / "policy.json"
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
            _load(url)  # warm-up
            for _ in range(ROUNDS):
                for sample in (None, 0.1, 1.0):
                    shadow = {} if sample is None else {"shadow": {"version": 2, "sample": sample}}
                    policy.write_text(json.dumps({"version": 1, **shadow}))
                    server.send_signal(signal.SIGHUP)
                    time.sleep(3)  # the shadow loads (or is released)
                    before = _cpu_ms(server.pid)
                    _load(url)
                    per_request = (_cpu_ms(server.pid) - before) / REQUESTS
                    copied = "" if sample is None else f" (shadow on {sample:.0%})"
                    print(f"{per_request:6.1f} core-ms/request{copied}", flush=True)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
