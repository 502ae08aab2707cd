"""`--log-db postgresql://...`: a real PostgreSQL server (Debian's `postgresql`, started
here with initdb and pg_ctl on a free port in a temporary directory) receives the rows of
two `imgcls serve` processes at once; stopped mid-load and started again, no request fails
and the rows in the database are the answers less the dropped count each /metrics shows.
Skipped, with the reason, when PostgreSQL or psycopg is not installed (.ci/run installs
both)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serve_utils import CAT, free_port, metric, process_server

BINARIES = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


class Postgres:
    """One PostgreSQL server in `root`, run by an unprivileged user when we are root
    (initdb refuses root)."""

    def __init__(self, root: Path) -> None:
        self.bin = Path(BINARIES[-1])
        self.data, self.port = root / "data", free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        root.mkdir(parents=True, exist_ok=True)
        if self.user:
            shutil.chown(root, self.user)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data}"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-w", "-l",
                  str(self.data / "server.log"), "start")  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    if not BINARIES:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg missing (pip install 'imgcls[postgres]')")
    # Not under pytest's root-only temporary folder: the server's user must reach it.
    root = Path(tempfile.mkdtemp(prefix="imgcls-postgres-"))
    try:
        server = Postgres(root)
        server.start()
        yield server
        server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _count(url: str, table: str) -> int:
    import psycopg

    with psycopg.connect(url) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_two_servers_share_the_log_and_lose_nothing_while_it_restarts(postgres, tiny_run):
    args = ("--model", str(tiny_run), "--log-db", postgres.url)
    answered, failed = [], []

    def load(url: str, stop: threading.Event) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while not stop.is_set():
                answer = client.post("/v1/classify", files={"file": ("cat.jpg", CAT)})
                (answered if answer.status_code == 200 else failed).append(answer.status_code)

    with process_server(*args) as (_, first), process_server(*args) as (_, second):
        stop = threading.Event()
        with ThreadPoolExecutor(4) as pool:
            for url in (first, second, first, second):
                pool.submit(load, url, stop)
            time.sleep(3)
            postgres.stop()  # mid-load
            time.sleep(3)
            postgres.start()
            time.sleep(3)
            stop.set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until both writers have written what they hold
            texts = [httpx.get(f"{url}/metrics", timeout=10).text for url in (first, second)]
            if all(metric(t, "imgcls_prediction_log_queue_depth") == 0 for t in texts):
                break
            time.sleep(0.5)
        dropped = sum(metric(t, "imgcls_prediction_log_dropped_total") for t in texts)
        errors = sum(metric(t, "imgcls_prediction_log_write_errors_total") for t in texts)

    assert failed == []
    assert errors > 0  # the database really was down for some writes
    assert len(answered) > 20
    assert _count(postgres.url, "predictions") == len(answered) - dropped
