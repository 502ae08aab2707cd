"""The Open Inference Protocol (v2) endpoints, spoken by the unmodified `tritonclient.http`
client against a real server; malformed requests sent raw."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from serve_utils import CAT, CAT_LABELS, ESPRESSO, thread_server
from tritonclient.utils import InferenceServerException

from imgcls.data.images import decode_image_bytes
from imgcls.data.preprocess import preprocess_image
from imgcls.models.labels import imagenet_labels
from imgcls.models.registry import build_model

MODEL = "efficientnet_lite0"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with thread_server() as base_url:
        yield base_url


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[triton.InferenceServerClient]:
    session = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)
    yield session
    session.close()


@pytest.fixture(scope="module")
def preprocessed() -> np.ndarray:
    """The two sample photos as the model's (2, 3, 224, 224) FP32 input."""
    _, preprocess = build_model(MODEL, pretrained=False)
    images = [decode_image_bytes(data, name="sample") for data in (CAT, ESPRESSO)]
    return np.stack([preprocess_image(image, preprocess) for image in images])


def _top1(probabilities: np.ndarray) -> list[str]:
    names = imagenet_labels().names
    return [names[i] for i in probabilities.argmax(axis=1)]


def _bytes_input(*images: bytes, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=binary)
    return tensor


def _fp32_input(batch: np.ndarray, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    return tensor


def test_health_and_model_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert not client.is_model_ready("nope")


def test_model_metadata_describes_inputs_and_output(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL
    assert {(t["name"], t["datatype"]) for t in metadata["inputs"]} == {
        ("input", "FP32"),
        ("image", "BYTES"),
    }
    assert metadata["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}
    ]
    assert client.get_server_metadata()["name"] == "imgcls"


def test_encoded_images_as_binary_bytes_tensor(client: triton.InferenceServerClient) -> None:
    result = client.infer(MODEL, [_bytes_input(CAT, ESPRESSO)])  # binary output by default
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (2, 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    cat, espresso = _top1(probabilities)
    assert cat in CAT_LABELS and espresso == "espresso"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_preprocessed_fp32_tensor_in_binary_and_json(
    client: triton.InferenceServerClient, preprocessed: np.ndarray, binary: bool
) -> None:
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer(
        MODEL, [_fp32_input(preprocessed, binary)], outputs=outputs, request_id="r1"
    )
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (2, 1000)
    assert _top1(probabilities)[1] == "espresso" and _top1(probabilities)[0] in CAT_LABELS
    assert result.get_response()["id"] == "r1"


def test_bytes_and_fp32_inputs_agree(
    client: triton.InferenceServerClient, preprocessed: np.ndarray
) -> None:
    from_bytes = client.infer(MODEL, [_bytes_input(CAT, ESPRESSO)]).as_numpy("probabilities")
    from_fp32 = client.infer(MODEL, [_fp32_input(preprocessed, True)]).as_numpy("probabilities")
    np.testing.assert_allclose(from_bytes, from_fp32, atol=1e-5)


def test_client_errors_arrive_as_inference_server_exceptions(
    client: triton.InferenceServerClient, preprocessed: np.ndarray
) -> None:
    with pytest.raises(InferenceServerException, match="nope"):
        client.infer("nope", [_bytes_input(CAT)])
    with pytest.raises(InferenceServerException, match="image"):
        client.infer(MODEL, [_bytes_input(b"not an image")])
    wrong_size = np.zeros((1, 3, 32, 32), dtype=np.float32)
    with pytest.raises(InferenceServerException, match="224"):
        client.infer(MODEL, [_fp32_input(wrong_size, True)])


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{MODEL}/infer", content=body, headers=headers, timeout=60)


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _fp32(shape: list[int], data: list, **extra) -> bytes:
    return _json(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": data}], **extra}
    )


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"{not json", None),
        (_json({"inputs": []}), None),
        (
            _json({"inputs": [{"name": "other", "datatype": "FP32", "shape": [1], "data": [1]}]}),
            None,
        ),
        (_fp32([1, 3, 224, 224], [1.0, 2.0]), None),
        (_fp32([0, 3, 224, 224], []), None),
        (_fp32([1, 3, 224, 224], ["a"] * (3 * 224 * 224)), None),
        (_fp32([1, 3, 224, 224], [float("nan")] * (3 * 224 * 224)), None),
        (_fp32([1, 3, 224, 224], [0.0] * (3 * 224 * 224), outputs=[{"name": "logits"}]), None),
        (
            _json(
                {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["a"]}]}
            ),
            None,
        ),
        (
            _json(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "datatype": "BYTES",
                            "shape": [1],
                            "parameters": {"binary_data_size": 10},
                        }
                    ]
                }
            )
            + b"\x05\x00",
            {"Inference-Header-Content-Length": "0"},
        ),
        (
            _json(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "datatype": "BYTES",
                            "shape": [1],
                            "parameters": {"binary_data_size": 6},
                        }
                    ]
                }
            )
            + b"\xff\x00\x00\x00ab",
            None,
        ),
    ],
    ids=[
        "not-json",
        "no-inputs",
        "unknown-input",
        "too-few-values",
        "empty-batch",
        "strings-as-floats",
        "nan",
        "unknown-output",
        "count-mismatch",
        "bad-header-length",
        "binary-without-header",
    ],
)
def test_malformed_requests_are_400_in_the_protocols_error_shape(
    url: str, body: bytes, headers: dict[str, str] | None
) -> None:
    response = _post(url, body, headers)
    assert response.status_code == 400, response.text
    assert isinstance(response.json()["error"], str)


def test_truncated_binary_bytes_element_is_400(url: str) -> None:
    header = _json(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 6},
                }
            ]
        }
    )
    response = _post(
        url, header + b"\xff\x00\x00\x00ab", {"Inference-Header-Content-Length": str(len(header))}
    )
    assert response.status_code == 400 and "ends inside" in response.json()["error"]
