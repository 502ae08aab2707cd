"""`imgcls serve` REST API (v1), limits, errors, batching and metrics, against a real
uvicorn server and a real HTTP client."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import cv2
import httpx
import numpy as np
import pytest
from serve_utils import CAT, CAT_LABELS, ESPRESSO, SAMPLES, bomb_png, metric, thread_server

MB = 1_000_000


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with thread_server(max_upload_mb=20, max_wait_ms=20) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=60) as session:
        yield session


def _classify(client: httpx.Client, *files: tuple[str, bytes], **params) -> httpx.Response:
    return client.post(
        "/v1/classify", params=params, files=[("file", (name, data)) for name, data in files]
    )


def _assert_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    error = body["error"]
    assert set(error) == {"type", "message"} and error["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    return error


def test_healthz_is_ok_once_loaded(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_models_lists_the_default_model_with_its_input_size(client: httpx.Client) -> None:
    assert client.get("/v1/models").json() == {
        "models": [
            {
                "name": "efficientnet_lite0",
                "num_classes": 1000,
                "input_size": [3, 224, 224],
                "backend": "onnx",
                "precision": "fp32",  # bf16 fails this model's parity gate
            }
        ]
    }


def test_classify_one_photo_gives_ranked_imagenet_predictions(client: httpx.Client) -> None:
    response = _classify(client, ("cat.jpg", CAT), top_k=3)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "efficientnet_lite0"
    [result] = body["results"]
    assert result["filename"] == "cat.jpg"
    predictions = result["predictions"]
    assert len(predictions) == 3 and predictions[0]["label"] in CAT_LABELS
    assert set(predictions[0]) == {"label", "class_id", "index", "score", "unknown", "present"}
    assert [p["present"] for p in predictions] == [True, False, False]
    assert result["labels"] == [predictions[0]["label"]]  # a single-label model: its top-1
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1


def test_classify_several_files_answers_each_in_order(client: httpx.Client) -> None:
    response = _classify(client, ("a.jpg", ESPRESSO), ("b.jpg", CAT), model="efficientnet_lite0")
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["a.jpg", "b.jpg"]
    assert results[0]["predictions"][0]["label"] == "espresso"
    assert results[0]["predictions"][0]["score"] > 0.9
    assert results[1]["predictions"][0]["label"] in CAT_LABELS
    assert len(results[0]["predictions"]) == 5  # the default top_k


def test_unknown_model_is_404(client: httpx.Client) -> None:
    error = _assert_error(_classify(client, ("cat.jpg", CAT), model="nope"), 404)
    assert "nope" in error["message"]


@pytest.mark.parametrize("top_k", ["0", "-3", "many"])
def test_bad_top_k_is_400(client: httpx.Client, top_k: str) -> None:
    error = _assert_error(_classify(client, ("cat.jpg", CAT), top_k=top_k), 400)
    assert "top_k" in error["message"]


def _classify_raw(client: httpx.Client, data: bytes, content_type: str, **params):
    return client.post(
        "/v1/classify", params=params, content=data, headers={"content-type": content_type}
    )


def _png(jpeg: bytes) -> bytes:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.mark.parametrize(
    ("kind", "content_type"),
    [
        ("jpeg", "image/jpeg"),
        ("png", "image/png"),
        ("jpeg", "application/octet-stream"),
        ("png", "image/*"),
    ],
)
def test_a_raw_image_body_gets_the_same_predictions_as_multipart(
    client: httpx.Client, kind: str, content_type: str
) -> None:
    data = CAT if kind == "jpeg" else _png(CAT)
    raw = _classify_raw(client, data, content_type, top_k=5)
    assert raw.status_code == 200, raw.text
    [result] = raw.json()["results"]
    assert result["filename"] == ""
    [multipart] = _classify(client, (f"cat.{kind}", data), top_k=5).json()["results"]
    assert [p["label"] for p in result["predictions"]] == [
        p["label"] for p in multipart["predictions"]
    ]
    assert [p["score"] for p in result["predictions"]] == pytest.approx(
        [p["score"] for p in multipart["predictions"]], abs=1e-5
    )


def test_a_body_of_an_unsupported_content_type_is_400_listing_the_accepted(
    client: httpx.Client,
) -> None:
    for content_type in ("text/plain", ""):
        error = _assert_error(_classify_raw(client, CAT, content_type), 400)
        assert "multipart/form-data" in error["message"] and "image/*" in error["message"]


@pytest.mark.parametrize(
    "data", [b"", b"hello, not an image", CAT[: len(CAT) // 2]], ids=["empty", "text", "truncated"]
)
def test_a_raw_body_that_is_not_an_image_is_422(client: httpx.Client, data: bytes) -> None:
    error = _assert_error(_classify_raw(client, data, "image/jpeg"), 422)
    assert error["type"] == "ImageError" and "request body" in error["message"]


def test_a_raw_body_over_the_cap_is_413(client: httpx.Client) -> None:
    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(25):
            yield b"\0" * MB

    for body in (b"\0" * (25 * MB), chunked()):
        response = client.post("/v1/classify", content=body, headers={"content-type": "image/jpeg"})
        assert _assert_error(response, 413)["type"] == "PayloadTooLarge"
    assert _classify_raw(client, CAT, "image/jpeg").status_code == 200


def test_served_predictions_equal_the_python_api(client: httpx.Client, classifier) -> None:
    paths = sorted(SAMPLES.glob("*.jpg"))
    assert len(paths) == 3
    for path in paths:
        served = _classify(client, (path.name, path.read_bytes()), top_k=5).json()
        expected = classifier.classify_image(path.read_bytes(), top_k=5)
        predictions = served["results"][0]["predictions"]
        assert [p["label"] for p in predictions] == [p.label for p in expected], path.name
        assert [p["score"] for p in predictions] == pytest.approx(
            [p.score for p in expected], abs=1e-5
        )


def test_multipart_without_a_file_field_is_400(client: httpx.Client) -> None:
    response = client.post("/v1/classify", files=[("image", ("cat.jpg", CAT))])
    assert "file" in _assert_error(response, 400)["message"]


def test_broken_multipart_is_400(client: httpx.Client) -> None:
    response = client.post(
        "/v1/classify",
        content=b"--x\r\nnonsense",
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    _assert_error(response, 400)


@pytest.mark.parametrize(
    "data", [b"", b"hello, not an image", CAT[: len(CAT) // 2]], ids=["empty", "text", "truncated"]
)
def test_undecodable_files_are_422_naming_the_file(client: httpx.Client, data: bytes) -> None:
    error = _assert_error(_classify(client, ("bad.jpg", data)), 422)
    assert error["type"] == "ImageError" and "bad.jpg" in error["message"]


def test_decompression_bomb_header_is_refused_with_422(client: httpx.Client) -> None:
    error = _assert_error(_classify(client, ("bomb.png", bomb_png())), 422)
    assert "bomb.png" in error["message"] and "pixels" in error["message"]
    assert client.get("/healthz").status_code == 200


def test_upload_over_the_cap_is_413_before_it_is_read(client: httpx.Client) -> None:
    response = _classify(client, ("huge.jpg", b"\0" * (60 * MB)))
    error = _assert_error(response, 413)
    assert error["type"] == "PayloadTooLarge"
    assert client.get("/healthz").status_code == 200


def test_chunked_upload_over_the_cap_is_413_while_streaming(client: httpx.Client) -> None:
    def body() -> Iterator[bytes]:  # no Content-Length: the cap is counted as bytes arrive
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'
        for _ in range(25):
            yield b"\0" * MB
        yield b"\r\n--b--\r\n"

    response = client.post(
        "/v1/classify",
        content=body(),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    _assert_error(response, 413)
    assert client.get("/healthz").status_code == 200


def test_a_client_that_hangs_up_mid_upload_is_no_server_error(
    client: httpx.Client, url: str
) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="cat.jpg"\r\n\r\n'
            + CAT[:1000]
        )
    deadline = time.monotonic() + 30
    while True:  # the server notices the hang-up on its own time
        text = client.get("/metrics").text
        left = metric(text, "imgcls_http_requests_total", route="/v1/classify", method="POST",
                      status="499")  # fmt: skip
        if left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert left == 1
    assert not metric(
        text, "imgcls_http_requests_total", route="/v1/classify", method="POST", status="500"
    )
    assert _classify(client, ("cat.jpg", CAT)).status_code == 200


def test_unknown_paths_and_methods_answer_json_errors(client: httpx.Client) -> None:
    assert _assert_error(client.get("/nope"), 404)["type"] == "NotFound"
    assert _assert_error(client.delete("/v1/classify"), 405)["type"] == "MethodNotAllowed"


def test_the_web_page_is_served_at_the_root(client: httpx.Client) -> None:
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "/v1/classify" in response.text


def test_openapi_docs_describe_both_classify_request_forms(client: httpx.Client) -> None:
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/healthz", "/v1/models", "/v1/classify", "/v2/models/{name}/infer"} <= set(
        schema["paths"]
    )
    body = schema["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/*", "application/octet-stream"} <= set(body)
    assert body["image/*"]["schema"]["format"] == "binary"
    assert "securitySchemes" not in schema["components"]  # no keys, no scheme


def _is_new_request_id(value: str) -> bool:
    return re.fullmatch(r"[0-9a-f]{32}", value) is not None  # 128 random bits, in hex


def test_every_response_carries_its_own_request_id(client: httpx.Client) -> None:
    responses = [
        client.get("/healthz"),
        client.get("/nope"),
        _classify(client, ("cat.jpg", CAT)),
        _classify(client, ("huge.jpg", b"\0" * (25 * MB))),  # refused by the body cap
    ]
    ids = [r.headers["x-request-id"] for r in responses]
    assert all(_is_new_request_id(i) for i in ids) and len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("7f3a9c2e-1b4d-4e8f-9a0b-1c2d3e4f5a6b", True),  # a UUID
        ("req.42_a:b-c", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("has spaces", False),
        ("<script>", False),
        ("a\u00e9", False),
    ],
)
def test_a_sane_client_request_id_is_kept_any_other_replaced(
    client: httpx.Client, sent: str, kept: bool
) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": sent.encode()})
    echoed = response.headers["x-request-id"]
    assert echoed == sent if kept else _is_new_request_id(echoed)


def test_error_bodies_and_the_access_log_carry_the_request_id(client: httpx.Client, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="imgcls.serve"):
        v1 = client.post(
            "/v1/classify",
            files={"file": ("bad.jpg", b"not an image")},
            headers={"X-Request-ID": "trace-v1-0042"},
        )
        v2 = client.post(
            "/v2/models/nope/infer", json={"inputs": []}, headers={"X-Request-ID": "trace-v2-7"}
        )
    assert v1.status_code == 422 and v1.json()["request_id"] == "trace-v1-0042"
    assert v2.status_code in (400, 404) and v2.json()["request_id"] == "trace-v2-7"
    assert isinstance(v2.json()["error"], str)  # the v2 protocol's error shape, kept
    assert re.search(r'"POST /v1/classify" 422 [\d.]+ms trace-v1-0042$', caplog.text, re.M)


def test_concurrent_requests_form_batches_visible_in_metrics(client: httpx.Client) -> None:
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: _classify(client, ("cat.jpg", CAT)), range(32)))
    assert all(r.status_code == 200 for r in responses)
    text = client.get("/metrics").text
    batches = metric(text, "imgcls_batch_size_count", model="efficientnet_lite0")
    images = metric(text, "imgcls_batch_size_sum", model="efficientnet_lite0")
    single = metric(text, "imgcls_batch_size_bucket", model="efficientnet_lite0", le="1.0")
    assert images >= 32 and single < batches, "no batch of more than one image"
    up_to_4 = metric(text, "imgcls_batch_size_bucket", model="efficientnet_lite0", le="4.0")
    assert up_to_4 == batches, "ONNX Runtime's default is two calls of up to 4 images"


def test_metrics_count_requests_latency_and_predictions(client: httpx.Client) -> None:
    _classify(client, ("espresso.jpg", ESPRESSO))
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    ok = metric(
        text, "imgcls_http_requests_total", route="/v1/classify", method="POST", status="200"
    )
    assert ok >= 1
    assert metric(text, "imgcls_http_request_duration_seconds_count", route="/v1/classify") >= ok
    assert (
        metric(text, "imgcls_predictions_total", model="efficientnet_lite0", label="espresso") >= 1
    )
    assert metric(text, "imgcls_top1_confidence_count", model="efficientnet_lite0") >= 1
    assert "imgcls_queue_depth" in text


def test_a_full_queue_answers_503_with_retry_after() -> None:
    with (
        thread_server(max_batch=1, max_queue=1, max_wait_ms=0) as base_url,
        httpx.Client(base_url=base_url, timeout=60) as client,
        ThreadPoolExecutor(12) as pool,
    ):
        responses = list(pool.map(lambda _: _classify(client, ("c.jpg", CAT)), range(24)))
    statuses = {r.status_code for r in responses}
    assert statuses <= {200, 503} and {200, 503} <= statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1"
    assert _assert_error(refused, 503)["type"] == "Overloaded"


def test_schemathesis_finds_no_server_errors(url: str, tmp_path) -> None:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/openapi.json",
        "--checks",
        "not_a_server_error,response_schema_conformance",
        "--max-examples",
        "15",
        "--seed",
        "7",
        "--workers",
        "1",
        "--no-color",
        "--generation-database",
        "none",
        "--report-dir",
        str(tmp_path),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
