"""What an API key costs a request: the middleware alone, the whole app, and the server's
CPU per request with auth on and off.

    PYTHONPATH=src python benchmarks/auth_cost.py [--requests 1000] [--rounds 5]

Three measurements, from the most precise to the most complete:

- the middleware alone: `ApiKeyMiddleware` and `RequestIdMiddleware` around an ASGI app
  that answers at once, called in a loop with a browser's headers (best of 5 rounds);
- the whole app in this process: `GET /v1/models` through `create_app` (middlewares,
  routing, FastAPI, JSON), with and without a key, no uvicorn, no network (best of 7);
- end to end: two `imgcls serve` processes side by side, each once with `--api-key` and
  once without (two processes differ by themselves), rounds alternating between them;
  each round sends `--requests` requests on one connection and reads the server's CPU
  time (user + system, /proc/PID/stat): core-ms per request, for `GET /v1/models` (the
  cheapest call that needs a key) and `POST /v1/classify` of a 48x48 JPEG as the body.

Measured 2026-12-03 08:36 UTC on 2 cores of an Intel Xeon (AVX-512), Python 3.11, the machine
shared with three other engineers' jobs (load average 3-6), efficientnet_lite0:

    $ benchmarks/auth_cost.py --call models --requests 5000 --rounds 6
              bare app: 0.37 µs a call
            request ID: 2.19 µs a call (+1.82 µs)
       API key (1 key): 1.60 µs a call (+1.23 µs)
     API key (10 keys): 2.11 µs a call (+1.73 µs)
    whole app, GET /v1/models: auth on 93.7, off 90.4 µs a request (best of 7 rounds; +3.3 µs)
      models: auth on 0.327, off 0.303 core-ms/request, difference +0.024 (12 rounds of 5000)
    $ benchmarks/auth_cost.py --call classify --requests 500 --rounds 6
    classify: auth on 9.550, off 9.130 core-ms/request, difference +0.420 (12 rounds of 500;
              on 8.48-10.22, off 8.74-10.38)

The key check costs 1.2 µs a request with one key, 1.7 with ten (a header scan and one
SHA-256 per request, then 32-byte comparisons), 2-3 µs through the whole app: 0.002-0.003
core-ms. End to end that is below what two server processes resolve on this machine: the
same run with neither process requiring a key (an A/A run) gave +0.001, a run on /healthz
(open: no check at all) +0.026, another split by user and system time -0.002 core-ms;
rounds of one process moved by 10%. On a classification, 9-10 core-ms, it is 0.03%. The
request ID costs about as much (1.8 µs: 16 random bytes, a regex, one more header).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from serve_utils import CAT, process_server  # noqa: E402

from imgcls.serve.auth import OPEN_PATHS, ApiKeyMiddleware, ApiKeys  # noqa: E402
from imgcls.serve.request_id import RequestIdMiddleware  # noqa: E402

KEY = "benchmark-key-0123456789abcdef0123456789abcdef"
_AUTH = {"Authorization": f"Bearer {KEY}"}  # sent to both: only the server's check differs
_BROWSER_HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"content-type", b"image/jpeg"),
    (b"content-length", b"1543"),
    (b"authorization", f"Bearer {KEY}".encode()),
]
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S  # utime + stime


def _round(client: httpx.Client, pid: int, call: str, count: int, image: bytes) -> float:
    """Core-ms per request of `count` requests."""
    before = _cpu_s(pid)
    for _ in range(count):
        if call == "models":
            response = client.get("/v1/models")
        else:
            response = client.post(
                "/v1/classify", content=image, headers={"content-type": "image/jpeg"}
            )
        assert response.status_code == 200, response.text
    return (_cpu_s(pid) - before) / count * 1000


def end_to_end(requests: int, rounds: int, model: str, calls: list[str]) -> None:
    photo = cv2.imdecode(np.frombuffer(CAT, np.uint8), cv2.IMREAD_COLOR)
    image = cv2.imencode(".jpg", cv2.resize(photo, (48, 48)))[1].tobytes()
    common = ("--model", model, "--no-log")
    results = {call: {"on": [], "off": []} for call in calls}
    # Two server processes differ by a few percent on their own (an A/A run with neither
    # requiring a key showed +0.03 core-ms on /v1/models); so each process runs once with
    # the key and once without, and the slot's own bias cancels.
    for keyed_slot in (0, 1):
        slots = [common, common]
        slots[keyed_slot] = (*common, "--api-key", KEY)
        with (
            process_server(*slots[0], log=Path(os.devnull)) as (first, first_url),
            process_server(*slots[1], log=Path(os.devnull)) as (second, second_url),
            httpx.Client(base_url=first_url, headers=_AUTH) as first_client,
            httpx.Client(base_url=second_url, headers=_AUTH) as second_client,
        ):
            servers = [(first_client, first), (second_client, second)]
            names = ["on", "off"] if keyed_slot == 0 else ["off", "on"]
            for call in calls:
                for round_ in range(rounds + 1):  # the first round warms up and is dropped
                    order = [0, 1] if round_ % 2 else [1, 0]  # each goes first in turn
                    for slot in order:
                        client, process = servers[slot]
                        cost = _round(client, process.pid, call, requests, image)
                        if round_:
                            results[call][names[slot]].append(cost)
    for call, by_name in results.items():
        on_ms, off_ms = (statistics.median(by_name[n]) for n in ("on", "off"))
        print(
            f"{call:>8}: auth on {on_ms:.3f}, off {off_ms:.3f} core-ms/request, difference "
            f"{on_ms - off_ms:+.3f} ({len(by_name['on'])} rounds of {requests} each; on "
            f"{' '.join(f'{x:.3f}' for x in by_name['on'])}; off "
            f"{' '.join(f'{x:.3f}' for x in by_name['off'])})"
        )


async def _answer(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def middleware_alone(loops: int) -> None:
    scope = {"type": "http", "path": "/v1/classify", "method": "POST", "headers": _BROWSER_HEADERS}
    stacks = {
        "bare app": _answer,
        "request ID": RequestIdMiddleware(_answer),
        "API key (1 key)": ApiKeyMiddleware(_answer, ApiKeys([KEY]), OPEN_PATHS),
        "API key (10 keys)": ApiKeyMiddleware(
            _answer, ApiKeys([KEY, *(f"other-key-{i:02d}-abcdef" for i in range(9))]), OPEN_PATHS
        ),
    }

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        pass

    async def loop(app) -> float:
        start = time.process_time()
        for _ in range(loops):
            await app(scope, receive, send)
        return (time.process_time() - start) / loops * 1e6

    timings = {name: [] for name in stacks}
    for _ in range(5):  # alternated, best of 5: interference only slows a loop down
        for name, app in stacks.items():
            timings[name].append(asyncio.run(loop(app)))
    bare = min(timings["bare app"])
    for name, values in timings.items():
        extra = "" if name == "bare app" else f" (+{min(values) - bare:.2f} µs)"
        print(f"{name:>18}: {min(values):.2f} µs a call{extra}")


async def _whole_app_us(app, headers: list, loops: int) -> float:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/v1/models", "raw_path": b"/v1/models", "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000), "state": {},
    }  # fmt: skip

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        assert message.get("status", 200) == 200

    start = time.process_time()
    for _ in range(loops):
        await app(dict(scope), receive, send)
    return (time.process_time() - start) / loops * 1e6


def whole_app(model: str, loops: int) -> None:
    """`GET /v1/models` through the whole app (middlewares, routing, FastAPI, JSON) in
    this process, without uvicorn or the network: the cost auth adds, free of the noise
    between two server processes."""
    from imgcls.serve.app import create_app
    from imgcls.serve.service import ServeConfig

    logging.disable(logging.INFO)  # the access log line costs both alike
    headers = [(name, value) for name, value in _BROWSER_HEADERS if name != b"content-type"]

    async def run() -> dict[str, list[float]]:
        apps = {
            "off": create_app(ServeConfig(models=(model,))),
            "on": create_app(ServeConfig(models=(model,), api_keys=(KEY,))),
        }
        timings: dict[str, list[float]] = {"off": [], "on": []}
        async with contextlib.AsyncExitStack() as stack:
            for app in apps.values():
                await stack.enter_async_context(app.router.lifespan_context(app))
            for round_ in range(7):
                for name in ("on", "off") if round_ % 2 else ("off", "on"):
                    timings[name].append(await _whole_app_us(apps[name], headers, loops))
        return timings

    timings = asyncio.run(run())
    logging.disable(logging.NOTSET)
    on, off = min(timings["on"]), min(timings["off"])
    print(
        f"whole app, GET /v1/models: auth on {on:.1f}, off {off:.1f} µs a request "
        f"(best of 7 rounds of {loops}; +{on - off:.1f} µs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--call", choices=["models", "classify"], action="append")
    parser.add_argument("--loops", type=int, default=100_000, help="middleware-alone calls")
    args = parser.parse_args()
    middleware_alone(args.loops)
    whole_app(args.model, max(args.loops // 30, 100))
    end_to_end(args.requests, args.rounds, args.model, args.call or ["models", "classify"])


if __name__ == "__main__":
    main()
