"""Experiment tracking: a real `mlflow server` (SQLite, 127.0.0.1, a free port) receives
imgcls runs, read back with MlflowClient; the logged model classifies an image through
mlflow.pyfunc; a server that goes away mid-run costs one warning; TensorBoard's event
files read back with TensorBoard's own reader.

One server serves the whole module (it takes about 30 s to start on two cores).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import cli_env, run_cli, write_photo_crops

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (pip install imgcls[track])")

from imgcls import ImageClassifier  # noqa: E402
from imgcls.training.config import TrainConfig  # noqa: E402
from imgcls.training.loop import train  # noqa: E402

TINY = ["--model", "simple_cnn", "--no-pretrained", "--img-size", "32", "--batch-size", "8",
        "--lr", "3e-3", "--augment", "none", "--workers", "0"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with a SQLite backend and proxied artifacts."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    log = open(root / "server.log", "w")  # noqa: SIM115 (open while the server runs)
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()}")
        time.sleep(0.5)
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:  # uvicorn waits for open connections to close
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    log.close()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    write_photo_crops(root, per_class=12, size=32)
    return root


def read_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_mlflow_run_holds_params_epoch_metrics_artifacts_and_a_registered_model(
    mlflow_server, photos, tmp_path
):
    from mlflow import MlflowClient

    out = tmp_path / "tracked"
    done = run_cli("train", str(photos), "--out", str(out), *TINY, "--epochs", "2",
                   "--mlflow", mlflow_server, "--register", "photos-cnn", "--no-tensorboard",
                   "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)  # MLflow's own lines stay off stdout
    client = MlflowClient(mlflow_server)
    [run] = client.search_runs(
        [client.get_experiment_by_name("imgcls").experiment_id],
        filter_string="attributes.run_name = 'tracked'",
    )
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "simple_cnn" and run.data.params["epochs"] == "2"
    assert run.data.params["lr"] == "0.003" and run.data.params["img_size"] == "32"
    assert run.data.tags["imgcls.version"] == mlflow_version_of_imgcls()
    assert len(run.data.tags["imgcls.data_fingerprint"]) == 16
    history = client.get_metric_history(run.info.run_id, "val_acc")
    rows = read_rows(out)
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx([float(r["val_acc"]) for r in rows])
    for name in ("train_loss", "lr", "images_per_s"):
        assert len(client.get_metric_history(run.info.run_id, name)) == 2, name
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(report["best_val_accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "metrics.csv", "curves.png", "best.safetensors",
            "confusion_matrix.png", "mistakes.png"} <= artifacts  # fmt: skip
    assert "state.pt" not in artifacts  # resume state stays in the run directory
    assert json.loads((out / "mlflow.json").read_text())["run_id"] == run.info.run_id

    [version] = client.search_model_versions("name = 'photos-cnn'")
    assert version.run_id == run.info.run_id
    image = next((photos / "cat").iterdir())
    mlflow.set_tracking_uri(mlflow_server)  # where "models:/" URIs resolve
    pyfunc = mlflow.pyfunc.load_model("models:/photos-cnn/1")
    import pandas as pd

    answer = pyfunc.predict(pd.DataFrame({"image": [image.read_bytes()]}))
    expected = ImageClassifier(str(out)).classify_image(image)[0]
    assert answer.loc[0, "label"] == expected.label
    assert answer.loc[0, "score"] == pytest.approx(expected.score, abs=1e-4)

    evaluated = run_cli("evaluate", str(out), str(photos), "--mlflow", "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = client.get_run(run.info.run_id).data.metrics
    accuracy = json.loads(evaluated.stdout)["accuracy"]
    assert metrics["eval_test_accuracy"] == pytest.approx(accuracy)
    report = {a.path for a in client.list_artifacts(run.info.run_id, "eval_test")}
    assert "eval_test/confusion_matrix.png" in report


def mlflow_version_of_imgcls() -> str:
    from imgcls import __version__

    return __version__


class Proxy:
    """A TCP relay to the tracking server that can be shut down: the server, as the
    training process sees it, goes away mid-run."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.open:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                s.close()

    def shut(self) -> None:
        self.open = False
        self.listener.close()


def test_a_tracking_server_gone_mid_run_costs_one_warning_and_the_run_completes(
    mlflow_server, photos, tmp_path
):
    proxy = Proxy(mlflow_server)
    out = tmp_path / "orphan"
    command = [sys.executable, "-m", "imgcls", "train", str(photos), "--out", str(out), *TINY,
               "--epochs", "3", "--mlflow", f"http://127.0.0.1:{proxy.port}", "--no-tensorboard",
               ]  # fmt: skip
    training = subprocess.Popen(command, env=cli_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not ((out / "metrics.csv").is_file() and read_rows(out)):
        assert training.poll() is None and time.monotonic() < deadline, training.communicate()
        time.sleep(0.2)
    proxy.shut()  # after the first epoch
    stdout, stderr = training.communicate(timeout=300)
    assert training.returncode == 0, stderr[-3000:]
    assert stderr.count("warning: MLflow") == 1, stderr[-3000:]
    assert [int(r["epoch"]) for r in read_rows(out)] == [1, 2, 3]
    assert ImageClassifier(str(out)).classify_image(next((photos / "cat").iterdir()))


def test_tensorboard_events_hold_epoch_scalars_plots_config_and_hparams(photos, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb_run"
    train(  # tensorboard is installed: its event files are on by default
        TrainConfig(
            data=str(photos), out=str(out), model="simple_cnn", pretrained=False, epochs=2,
            batch_size=8, img_size=32, lr=3e-3, augment="none", workers=0, progress=False,
        )
    )  # fmt: skip
    events = EventAccumulator(str(out / "tb"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train_loss", "val_acc", "lr", "images_per_s"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("val_acc")] == [1, 2]
    rows = read_rows(out)
    assert [e.value for e in events.Scalars("val_acc")] == pytest.approx(
        [float(r["val_acc"]) for r in rows]
    )
    assert {"confusion_matrix", "mistakes", "curves"} <= set(tags["images"])
    assert "config/text_summary" in tags["tensors"]
    assert "_hparams_/session_end_info" in events.PluginTagToContent("hparams")
    final = events.Scalars("final/best_val_accuracy")
    assert final[-1].value == pytest.approx(max(float(r["val_acc"]) for r in rows))
