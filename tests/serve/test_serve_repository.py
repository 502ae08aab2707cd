"""`imgcls serve --model-repository`: versions, hot swap under load with nothing lost, a
broken version refused while the live one serves, rollback by pinning, and Triton's
repository extension driven by `tritonclient.http` as it would drive Triton."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from serve_utils import CAT, process_server, thread_server
from tritonclient.utils import InferenceServerException


def _version(repo: Path, run: Path, number: int) -> None:
    shutil.copytree(run, repo / "tiny" / str(number))


def _classify(url: str, **params: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/classify",
        params=params,
        content=CAT,
        headers={"content-type": "image/jpeg"},
        timeout=30,
    )


def _live(url: str) -> str:
    response = _classify(url)
    assert response.status_code == 200, response.text
    return response.json()["model_version"]


def test_three_swaps_under_steady_load_lose_no_request(tiny_run: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _version(repo, tiny_run, 1)
    log_db = tmp_path / "log.db"
    answers: list[tuple[int, str]] = []  # (client, version) in the order each client got them
    failures: list[str] = []
    stop = threading.Event()

    def client(index: int) -> None:
        with httpx.Client(timeout=30) as session:
            while not stop.is_set():
                try:
                    response = session.post(
                        f"{url}/v1/classify", content=CAT, headers={"content-type": "image/jpeg"}
                    )
                except httpx.TransportError as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    answers.append((index, response.json()["model_version"]))

    args = ("--model-repository", str(repo), "--log-db", str(log_db))
    with process_server(*args, log=tmp_path / "server.log") as (process, url):
        clients = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for thread in clients:
            thread.start()
        for number in (2, 3, 4):
            time.sleep(2.5)
            _version(repo, tiny_run, number)
            process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while _live(url) != "4" and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    log = (tmp_path / "server.log").read_text()

    assert failures == [], failures[:5]
    assert {version for _, version in answers} >= {"1", "4"}
    for index in range(4):  # each client saw versions only go forward: never an old one back
        seen = [int(version) for client_, version in answers if client_ == index]
        assert seen == sorted(seen)
    assert log.count("version 4 live") == 1 and "version 3 drains" in log
    with sqlite3.connect(log_db) as db:
        logged = dict(db.execute("SELECT model, COUNT(*) FROM predictions GROUP BY model"))
    assert set(logged) <= {"tiny:1", "tiny:2", "tiny:3", "tiny:4"} and "tiny:4" in logged


@pytest.fixture
def repository(tiny_run: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    _version(repo, tiny_run, 1)
    return repo


def test_a_broken_version_is_refused_while_the_live_one_serves_then_rollback_pins(
    repository: Path, tiny_run: Path
) -> None:
    with thread_server(model_repository=str(repository), models=()) as url:
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        assert _live(url) == "1"
        broken = repository / "tiny" / "2"
        broken.mkdir()
        (broken / "model.onnx").write_bytes(b"not a model")
        with pytest.raises(InferenceServerException, match="version 2 not loaded"):
            client.load_model("tiny")
        assert _live(url) == "1"  # still answering, from the version that was live
        index = {entry["version"]: entry for entry in client.get_model_repository_index()}
        assert index["1"]["state"] == "READY"
        assert index["2"]["state"] == "UNAVAILABLE" and "Protobuf" in index["2"]["reason"]

        shutil.rmtree(broken)
        _version(repository, tiny_run, 2)
        client.load_model("tiny")
        assert _live(url) == "2"
        rollback = '{"version_policy": {"specific": {"versions": [1]}}}'
        client.load_model("tiny", config=rollback)
        assert _live(url) == "1"
        assert _classify(url, version="2").status_code == 404

        client.unload_model("tiny")
        assert _classify(url).status_code == 404
        assert not client.is_model_ready("tiny")
        client.load_model("tiny")
        assert client.is_model_ready("tiny", model_version="1")


def test_policy_json_pins_the_live_version_and_v2_takes_versions(
    repository: Path, tiny_run: Path
) -> None:
    _version(repository, tiny_run, 2)
    (repository / "tiny" / "policy.json").write_text('{"version": 1}')
    with thread_server(model_repository=str(repository), models=()) as url:
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        assert _live(url) == "1"
        batch = np.zeros((1, 3, 32, 32), np.float32)
        tensor = triton.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        result = client.infer("tiny", [tensor], model_version="1")
        assert result.get_response()["model_version"] == "1"
        assert result.as_numpy("probabilities").shape == (1, 3)
        with pytest.raises(InferenceServerException, match="not loaded"):
            client.infer("tiny", [tensor], model_version="2")
        assert client.get_model_metadata("tiny", model_version="1")["versions"] == ["1"]


def test_the_repository_api_needs_the_api_key(repository: Path) -> None:
    settings = {"model_repository": str(repository), "models": (), "api_keys": ("k3y",)}
    with thread_server(**settings) as url:
        assert httpx.post(f"{url}/v2/repository/index").status_code == 401
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        with pytest.raises(InferenceServerException):
            client.unload_model("tiny")
        headers = {"Authorization": "Bearer k3y"}
        assert client.get_model_repository_index(headers=headers)[0]["state"] == "READY"


def test_a_shadow_sees_the_live_requests_and_compare_matches_the_offline_figures(
    repository: Path, tiny_run: Path, tmp_path: Path
) -> None:
    import torch  # deferred: a training install's; the test changes a run's weights
    from helpers import write_photo_crops
    from safetensors.torch import load_file, save_file

    from imgcls.inference.classifier import ImageClassifier

    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)  # version 2: other weights (a seeded perturbation)
    generator = torch.Generator().manual_seed(1)
    tensors = load_file(other / "best.safetensors")
    for key, value in tensors.items():
        if value.ndim >= 2:  # conv and linear weights; norms keep their statistics
            tensors[key] = value + 0.3 * torch.randn(value.shape, generator=generator)
    save_file(tensors, other / "best.safetensors")
    shutil.copytree(other, repository / "tiny" / "2")
    (repository / "tiny" / "policy.json").write_text(
        '{"version": 1, "shadow": {"version": 2, "sample": 1.0}}'
    )
    images = sorted(write_photo_crops(tmp_path / "crops", per_class=3, size=48).rglob("*.jpg"))
    with thread_server(model_repository=str(repository), models=()) as url:
        for image in images:
            response = httpx.post(
                f"{url}/v1/classify",
                content=image.read_bytes(),
                headers={"content-type": "image/jpeg"},
            )
            assert response.json()["model_version"] == "1"  # the shadow never answers
            time.sleep(0.05)  # one at a time: the shadow is never shed
        label = images[0].parent.name
        form = {"label": label}
        assert (
            httpx.post(
                f"{url}/v1/feedback", files={"file": images[0].read_bytes()}, data=form
            ).status_code
            == 200
        )
        figures = httpx.get(f"{url}/v1/models/tiny/compare").json()

    live = ImageClassifier(str(repository / "tiny" / "1")).classify_images(images, top_k=1)
    shadow = ImageClassifier(str(other)).classify_images(images, top_k=1)
    agree = np.mean([a[0].label == b[0].label for a, b in zip(live, shadow, strict=True)])
    assert figures["images"] == len(images) and figures["shed"] == 0
    assert figures["top1_agreement"] == pytest.approx(agree)
    assert figures["live"]["mean_confidence"] == pytest.approx(np.mean([p[0].score for p in live]))
    assert figures["shadow"]["mean_confidence"] == pytest.approx(
        np.mean([p[0].score for p in shadow])
    )
    assert figures["labelled"] == 1
    assert figures["live"]["accuracy"] == float(live[0][0].label == label)
    assert figures["shadow"]["accuracy"] == float(shadow[0][0].label == label)
