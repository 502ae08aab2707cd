"""`imgcls serve` against the servers users would pick instead, on the same ONNX file.

    .venv/bin/python benchmarks/peers.py              # about 10 minutes on 2 cores
    ROUNDS=1 SECONDS_PER_RUN=8 .venv/bin/python benchmarks/peers.py
    IMAGE=samples/espresso.jpg PEERS=flask .venv/bin/python benchmarks/peers.py

The peers are installed into a throwaway venv of their own (PEERS_VENV, default
~/.cache/imgcls-bench/peers-venv; never project dependencies): BentoML (adaptive
batching), LitServe (batching), Ray Serve (`@serve.batch`), and Flask under gunicorn, two
sync worker processes with one ONNX Runtime thread each and no batching (the seed's own
deployment: a process per core). Each serves the file `imgcls export` writes for
efficientnet_lite0, with the same decoding and preprocessing as imgcls (OpenCV, the
file's own mean, std and crop) and a top-5 JSON answer; imgcls serves it with its
defaults (prediction log on), and in one process (`--workers 1`). wrk drives each with one
multipart upload of the same photo per request, 16 connections and then 1; the servers
take turns within each round, and the model alone (`imgcls benchmark`, batch 8) is
measured in every round too. Prints the medians over rounds as a Markdown table, with the
CPU time the server's processes took per request at 16 connections (core-ms, all
processes; for imgcls also per process). PEERS picks peers by a word of their names
(comma-separated; default: all). Needs wrk (Debian: apt-get install -y wrk) and Linux.

wrk, the servers and the model share the machine's cores: compare figures of one run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEERS_VENV = Path(
    os.environ.get("PEERS_VENV", Path.home() / ".cache" / "imgcls-bench" / "peers-venv")
)
PEER_PACKAGES = (
    "bentoml==1.4.*",
    "litserve==0.2.*",
    "ray[serve]==2.60.*",
    "flask==3.*",
    "gunicorn==23.*",
    "onnxruntime",
    "opencv-python-headless",
    "numpy",
    "python-multipart",
)
SECONDS = float(os.environ.get("SECONDS_PER_RUN", "15"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))
IMAGE = Path(os.environ.get("IMAGE", REPO / "samples" / "cat.jpg"))
PEERS = [word for word in os.environ.get("PEERS", "").lower().split(",") if word]
MODEL = "efficientnet_lite0"
PORT = 8141
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}

# What every peer runs per image: imgcls's own steps (images.py, transforms.py), written
# out with OpenCV and NumPy as a user of those servers would.
PEER_COMMON = """
import json, math, os
import cv2, numpy as np, onnxruntime as ort

MODEL = os.environ["PEER_MODEL"]
options = ort.SessionOptions()
options.intra_op_num_threads = int(os.environ.get("PEER_THREADS", "0"))  # 0: every core
session = ort.InferenceSession(MODEL, options, providers=["CPUExecutionProvider"])
meta = json.loads(session.get_modelmeta().custom_metadata_map["imgcls"])
names = meta["class_names"]
pre = meta["preprocess"]
_, crop_h, crop_w = pre["input_size"]
resize_to = math.floor(min(crop_h, crop_w) / pre["crop_pct"])
mean = np.asarray(pre["mean"], np.float32)[:, None, None] * 255
inv_std = 1 / (np.asarray(pre["std"], np.float32)[:, None, None] * 255)
reduce = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
          (2, cv2.IMREAD_REDUCED_COLOR_2))


def prepare(data):
    buffer = np.frombuffer(data, np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR_RGB)
    shorter = min(image.shape[:2])
    for factor, flag in reduce:  # libjpeg scales while decoding, as imgcls does
        if shorter // factor >= resize_to:
            image = cv2.imdecode(buffer, flag | cv2.IMREAD_COLOR_RGB)
            break
    h, w = image.shape[:2]
    rh, rw = (resize_to, int(resize_to * w / h)) if h <= w else (int(resize_to * h / w), resize_to)
    shrink = h / rh
    interpolation = (cv2.INTER_AREA if shrink >= 1.25 else
                     cv2.INTER_LINEAR if shrink > 1 else cv2.INTER_CUBIC)
    image = cv2.resize(image, (rw, rh), interpolation=interpolation)
    top, left = round((rh - crop_h) / 2), round((rw - crop_w) / 2)
    crop = image[top:top + crop_h, left:left + crop_w]
    return (crop.transpose(2, 0, 1).astype(np.float32) - mean) * inv_std


def top5(batch):
    logits = session.run(["logits"], {"input": batch})[0]
    logits = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return [
        [{"label": names[i], "index": int(i), "score": float(row[i])}
         for i in np.argsort(-row)[:5]]
        for row in probabilities
    ]
"""

BENTO_SERVICE = """
from pathlib import Path
import bentoml
import numpy as np
from peer_common import prepare, top5


@bentoml.service(workers=1)
class Classifier:
    @bentoml.api(batchable=True, max_batch_size=16, max_latency_ms=10_000)
    def classify(self, images: list[Path]) -> list[list[dict]]:
        return top5(np.stack([prepare(path.read_bytes()) for path in images]))
"""

LITSERVE_APP = """
import os, sys
import litserve as ls
import numpy as np
from peer_common import prepare, top5


class Classifier(ls.LitAPI):
    def setup(self, device):
        pass

    def decode_request(self, request):
        return prepare(request["file"].file.read())

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, batch):
        return top5(batch)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        return {"predictions": output}


if __name__ == "__main__":
    api = Classifier(max_batch_size=16, batch_timeout=0.005)
    ls.LitServer(api, accelerator="cpu", workers_per_device=1).run(port=int(sys.argv[1]))
"""

RAY_APP = """
import signal, sys, time
import numpy as np
import ray
from ray import serve
from peer_common import prepare, top5


@serve.deployment
class Classifier:
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def run(self, arrays):
        return top5(np.stack(arrays))

    async def __call__(self, request):
        if request.method == "GET":  # ready: the deployment is up
            return "ok"
        form = await request.form()
        return {"predictions": await self.run(prepare(await form["file"].read()))}


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # ray.shutdown at exit
    ray.init(include_dashboard=False, log_to_driver=False, _temp_dir=sys.argv[2])
    serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
    serve.run(Classifier.bind(), route_prefix="/predict")
    while True:
        time.sleep(3600)
"""

FLASK_APP = """
from flask import Flask, jsonify, request
from peer_common import prepare, top5

app = Flask(__name__)


@app.get("/health")
def health():
    return "ok"


@app.post("/predict")
def predict():
    return jsonify({"predictions": top5(prepare(request.files["file"].read())[None])[0]})
"""

WRK_SCRIPT = """
local file = assert(io.open(os.getenv("IMAGE"), "rb"))
local data = file:read("*a")
file:close()
local boundary = "imgcls-peers-boundary"
wrk.method = "POST"
wrk.path = os.getenv("URL_PATH")
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
wrk.body = "--" .. boundary .. "\\r\\n"
  .. 'Content-Disposition: form-data; name="' .. os.getenv("FIELD")
  .. '"; filename="image.jpg"\\r\\nContent-Type: image/jpeg\\r\\n\\r\\n'
  .. data .. "\\r\\n--" .. boundary .. "--\\r\\n"
"""


@dataclass(frozen=True)
class Server:
    name: str
    command: list[str]
    health: str  # path that answers 200 once the model is loaded
    path: str  # the classify route
    field: str  # its multipart file field
    env: tuple[tuple[str, str], ...] = ()  # added to its environment


@dataclass
class Run:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    core_ms: dict[str, float]  # CPU time per request by process (name), all its threads


def main() -> None:
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install -y wrk")
    peer_python = ensure_peer_venv()
    work = Path(tempfile.mkdtemp(prefix="imgcls-peers-"))
    model = work / f"{MODEL}.onnx"
    imgcls("export", MODEL, "--format", "onnx", "--out", str(model))
    (work / "peer_common.py").write_text(PEER_COMMON)
    (work / "bento_service.py").write_text(BENTO_SERVICE)
    (work / "litserve_app.py").write_text(LITSERVE_APP)
    (work / "ray_app.py").write_text(RAY_APP)
    (work / "flask_app.py").write_text(FLASK_APP)
    (work / "upload.lua").write_text(WRK_SCRIPT)
    port = str(PORT)
    servers = [
        Server(
            "imgcls serve (defaults: prediction log on)",
            [sys.executable, "-m", "imgcls", "serve", "--model", str(model), "--port", port,
             "--log-db", str(work / "predictions.db")],
            "/healthz", "/v1/classify?top_k=5", "file",
        ),
        Server(
            "imgcls serve --workers 1 (log on)",
            [sys.executable, "-m", "imgcls", "serve", "--model", str(model), "--port", port,
             "--log-db", str(work / "predictions-1.db"), "--workers", "1"],
            "/healthz", "/v1/classify?top_k=5", "file",
        ),
        Server(
            "Flask 3 + gunicorn 23, 2 sync workers, 1 ORT thread each, no batching",
            [str(peer_python.parent / "gunicorn"), "--workers", "2", "--bind",
             f"127.0.0.1:{port}", "flask_app:app"],
            "/health", "/predict", "file", (("PEER_THREADS", "1"),),
        ),
        Server(
            "Ray Serve 2.60, @serve.batch (max batch 16, 5 ms)",
            [str(peer_python), "ray_app.py", port, str(work / "ray")],
            "/predict", "/predict", "file",
        ),
        Server(
            "BentoML 1.4, adaptive batching (max batch 16)",
            [str(peer_python.parent / "bentoml"), "serve", "bento_service:Classifier",
             "--port", port],
            "/readyz", "/classify", "images",
        ),
        Server(
            "LitServe 0.2, batching (max batch 16, 5 ms)",
            [str(peer_python), "litserve_app.py", port],
            "/health", "/predict", "file",
        ),
    ]  # fmt: skip
    if PEERS:  # imgcls and the peers named
        servers = [s for s in servers if s.name.startswith("imgcls")
                   or any(word in s.name.lower() for word in PEERS)]  # fmt: skip
    model_only: list[float] = []
    runs: dict[str, dict[int, list[Run]]] = {s.name: {16: [], 1: []} for s in servers}
    for round_number in range(1, ROUNDS + 1):
        model_only.append(model_images_per_s(model))
        print(f"round {round_number}: model alone {model_only[-1]:.0f} images/s", file=sys.stderr)
        for server in servers:
            for connections, run in serve_and_load(server, work).items():
                runs[server.name][connections].append(run)
                print(f"  {server.name}, {connections} connections: {run}", file=sys.stderr)
    print_table(model_only, runs)
    shutil.rmtree(work, ignore_errors=True)


def ensure_peer_venv() -> Path:
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEER_PACKAGES], check=True)
    return python


def imgcls(*args: str) -> str:
    command = [sys.executable, "-m", "imgcls", *args]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, check=True).stdout


def model_images_per_s(model: Path) -> float:
    out = imgcls("benchmark", str(model), "--batch-size", "8", "--json")
    return float(json.loads(out)[0]["images_per_s"])


def serve_and_load(server: Server, work: Path) -> dict[int, Run]:
    env = {**ENV, "PEER_MODEL": str(work / f"{MODEL}.onnx"), "PYTHONPATH": f"{work}:{REPO / 'src'}",
           **dict(server.env)}  # fmt: skip
    url = f"http://127.0.0.1:{PORT}"
    log = open(work / "server.log", "w")  # noqa: SIM115 (closed with the server)
    # A session of its own: LitServe and BentoML start worker processes that outlive a
    # signal to their parent alone.
    process = subprocess.Popen(
        server.command, cwd=work, env=env, stdout=log, stderr=log, start_new_session=True
    )
    try:
        wait_ready(url + server.health, process, work / "server.log")
        wrk_env = {**env, "IMAGE": str(IMAGE), "URL_PATH": server.path, "FIELD": server.field}
        wrk(url, wrk_env, work, connections=4, seconds=3, group=process.pid)  # warm-up
        return {
            c: wrk(url, wrk_env, work, connections=c, seconds=SECONDS, group=process.pid)
            for c in (16, 1)
        }
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # workers left behind
        log.close()
        time.sleep(1)  # the port is free again


def wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    for _ in range(240):
        if process.poll() is not None:
            sys.exit(f"{url}: the server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"{url}: not ready after 2 minutes:\n{log.read_text()[-3000:]}")


def wrk(url: str, env: dict, work: Path, connections: int, seconds: float, group: int) -> Run:
    threads = 1 if connections == 1 else 2
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency",
               "--timeout", "10s", "-s", str(work / "upload.lua"), url]  # fmt: skip
    before = group_cpu(group)
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    after = group_cpu(group)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        sys.exit(f"{url}: {errors.group(1)} failed requests\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    core_ms: dict[str, float] = {}
    for pid, (name, seconds_used) in after.items():
        used = seconds_used - before.get(pid, (name, 0.0))[1]
        core_ms[name] = core_ms.get(name, 0.0) + used * 1000 / max(requests, 1)
    return Run(
        float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),
        _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),
        core_ms,
    )


def group_cpu(group: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system, all threads) of the server started as process `group`
    and of every process under it (Ray's actors leave the process group), by pid, with a
    name: "parent" for the server's first process, else its command name (imgcls's
    workers: "worker")."""
    tick = os.sysconf("SC_CLK_TCK")
    seen: dict[int, tuple[int, int, str, float]] = {}  # pid: ppid, pgrp, name, seconds
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        comm, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        name = "worker" if b"multiprocessing.spawn" in cmdline else comm  # fields: state,
        seconds = (int(fields[11]) + int(fields[12])) / tick  # ppid, pgrp, ... utime, stime
        seen[int(entry.name)] = (int(fields[1]), int(fields[2]), name, seconds)

    def belongs(pid: int) -> bool:
        while pid in seen:
            if pid == group or seen[pid][1] == group:
                return True
            pid = seen[pid][0]
        return False

    return {
        pid: ("parent" if pid == group else name, seconds)
        for pid, (_, _, name, seconds) in seen.items()
        if belongs(pid)
    }


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def print_table(model_only: list[float], runs: dict[str, dict[int, list[Run]]]) -> None:
    def median(values: list[float]) -> float:
        return statistics.median(values)

    alone = median(model_only)
    print(f"Model alone (ONNX Runtime, batch 8): {alone:.0f} images/s (rounds: "
          f"{', '.join(f'{v:.0f}' for v in model_only)}); medians of {ROUNDS} rounds, "
          f"{SECONDS:g} s runs, {IMAGE.name}:\n")  # fmt: skip
    print("| server | req/s, 16 conn. | × model alone | p50 / p99 ms, 16 conn. "
          "| p99 / p50 | p50 ms, 1 conn. | core-ms per request, 16 conn. |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    best_peer = 0.0
    for name, by_connections in runs.items():
        loaded, single = by_connections[16], by_connections[1]
        rps = median([r.requests_per_s for r in loaded])
        p50, p99 = median([r.p50_ms for r in loaded]), median([r.p99_ms for r in loaded])
        by_process = {key: median([r.core_ms.get(key, 0.0) for r in loaded])
                      for key in loaded[0].core_ms}  # fmt: skip
        split = ", ".join(f"{key} {value:.1f}" for key, value in sorted(by_process.items()))
        print(f"| {name} | {rps:.0f} | {rps / alone:.2f} | {p50:.0f} / {p99:.0f} | "
              f"{p99 / p50:.2f} | {median([r.p50_ms for r in single]):.1f} | "
              f"{sum(by_process.values()):.1f} ({split}) |")  # fmt: skip
        if not name.startswith("imgcls"):
            best_peer = max(best_peer, rps)
        elif "--workers" not in name:
            ours = rps
    print(f"\nimgcls against the best peer: {ours / best_peer:.2f}x")


if __name__ == "__main__":
    main()
