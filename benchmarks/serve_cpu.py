"""Where a served request's CPU goes: core-ms per request of each thread group of
`imgcls serve` under wrk (model workers, decode pool, event loop, log writer).

    .venv/bin/python benchmarks/serve_cpu.py                  # defaults, 16 connections, 10 s
    CONNECTIONS=1 SECONDS_PER_RUN=5 .venv/bin/python benchmarks/serve_cpu.py --max-batch 8

Extra arguments go to `imgcls serve`. The CPU time of each thread is read from
/proc/PID/task/TID/stat before and after the load; threads are named by `py-spy dump`
(installed into the throwaway venv of benchmarks/peers.py, never a project dependency).
Core-ms per request barely moves with the machine's other load, unlike requests/s.
Needs wrk (Debian: apt-get install -y wrk) and Linux.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from peers import PEERS_VENV, ensure_peer_venv  # noqa: E402

PORT = 8151
CONNECTIONS = int(os.environ.get("CONNECTIONS", "16"))
SECONDS = float(os.environ.get("SECONDS_PER_RUN", "10"))
IMAGE = os.environ.get("IMAGE", str(REPO / "samples" / "cat.jpg"))
TICK = os.sysconf("SC_CLK_TCK")


def main() -> None:
    py_spy = ensure_py_spy()
    url = f"http://127.0.0.1:{PORT}"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "IMAGE": IMAGE}
    command = [sys.executable, "-m", "imgcls", "serve", "--port", str(PORT), *sys.argv[1:]]
    scratch = tempfile.mkdtemp(prefix="imgcls-serve-cpu-")  # the log and feedback files
    server = subprocess.Popen(command, env=env, cwd=scratch, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url + "/healthz")
        lua = str(REPO / "benchmarks" / "serve_load.lua")
        # wrk's script reads IMAGE too (from any working directory)
        subprocess.run(["wrk", "-t1", "-c4", "-d3s", "-s", lua, url], capture_output=True, env=env)
        before = thread_cpu(server.pid)
        report = subprocess.run(
            ["wrk", f"-t{min(2, CONNECTIONS)}", f"-c{CONNECTIONS}", f"-d{SECONDS:g}s",
             "--latency", "-s", lua, url],
            capture_output=True, text=True, check=True, env=env,
        ).stdout  # fmt: skip
        after = thread_cpu(server.pid)
        names = thread_names(py_spy, server.pid)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(scratch, ignore_errors=True)
    if "Non-2xx" in report:  # timing refusals would say nothing about classifying
        sys.exit(f"requests failed under load:\n{report}")
    requests = int(re.search(r"(\d+) requests in", report).group(1))
    groups: collections.Counter[str] = collections.Counter()
    for tid, seconds in after.items():
        name = re.sub(r"[_\d]+$", "", names.get(tid, "ONNX Runtime pool"))
        groups[name] += seconds - before.get(tid, 0.0)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", report).group(1)
    print(f"{requests} requests at {CONNECTIONS} connections, {rate} requests/s")
    print("| thread group | core-ms per request |\n|---|---|")
    for name, seconds in groups.most_common():
        print(f"| {name} | {seconds * 1000 / requests:.2f} |")
    print(f"| all | {sum(groups.values()) * 1000 / requests:.2f} |")


def ensure_py_spy() -> Path:
    ensure_peer_venv()
    py_spy = PEERS_VENV / "bin" / "py-spy"
    if not py_spy.exists():
        pip = [str(PEERS_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "py-spy"]
        subprocess.run(pip, check=True)
    return py_spy


def wait_ready(url: str) -> None:
    for _ in range(240):
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"{url}: not ready after 2 minutes")


def thread_cpu(pid: int) -> dict[str, float]:
    """User + system CPU seconds of each thread of `pid`, by thread id."""
    seconds = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended
            continue
        seconds[tid] = (int(fields[11]) + int(fields[12])) / TICK
    return seconds


def thread_names(py_spy: Path, pid: int) -> dict[str, str]:
    """Python's name of each thread by thread id; threads Python did not start are absent."""
    dump = subprocess.run([str(py_spy), "dump", "-p", str(pid)], capture_output=True, text=True)
    return dict(re.findall(r'Thread (\d+) \(\w+\): "([^"]+)"', dump.stdout))


if __name__ == "__main__":
    main()
