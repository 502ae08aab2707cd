"""Who may call `imgcls serve`: API keys against a real server (uvicorn in a thread; the
command in a process for the key it generates off loopback), spoken to by httpx and by the
unmodified `tritonclient`."""

from __future__ import annotations

import logging
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from helpers import run_cli
from serve_utils import CAT, CAT_LABELS, metric, process_server, thread_server
from tritonclient.utils import InferenceServerException

MODEL = "efficientnet_lite0"
KEYS = ("first-key-2f9c41d07a", "second-key-8be1c3a5f6")
UPLOAD = {"file": ("cat.jpg", CAT)}

# Every endpoint that needs a key: (method, path, request arguments).
PROTECTED = [
    ("GET", "/v1/models", {}),
    ("GET", f"/v1/models/{MODEL}/labels", {}),
    ("POST", "/v1/classify", {"files": UPLOAD}),
    ("POST", "/v1/explain", {"files": UPLOAD}),
    ("POST", "/v1/feedback", {"files": UPLOAD, "data": {"label": "tabby"}}),
    ("GET", "/v2", {}),
    ("GET", f"/v2/models/{MODEL}", {}),
    ("GET", f"/v2/models/{MODEL}/ready", {}),
    ("POST", f"/v2/models/{MODEL}/infer", {"json": {"inputs": []}}),
]
OPEN = ["/healthz", "/v2/health/live", "/v2/health/ready", "/metrics", "/", "/docs"]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with thread_server(api_keys=KEYS, max_wait_ms=1) as base_url:
        yield base_url


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(("method", "path", "request_args"), PROTECTED)
@pytest.mark.parametrize("headers", [{}, _bearer("wrong"), {"X-API-Key": "wrong"}])
def test_no_key_or_a_wrong_key_is_401_with_the_json_error_shape(
    url: str, method: str, path: str, request_args: dict, headers: dict
) -> None:
    response = httpx.request(method, url + path, headers=headers, timeout=30, **request_args)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    if path.startswith("/v2"):  # the Open Inference Protocol's shape
        message = body["error"]
    else:
        assert body["error"]["type"] == "Unauthorized"
        message = body["error"]["message"]
    expected = "not one this server accepts" if headers else "Authorization: Bearer KEY"
    assert expected in message and "wrong" not in message


@pytest.mark.parametrize(
    "headers",
    [_bearer(KEYS[0]), {"X-API-Key": KEYS[1]}, {"authorization": f"bearer {KEYS[1]}"}],
    ids=["bearer", "x-api-key", "lower-case"],
)
def test_either_header_with_any_key_classifies(url: str, headers: dict) -> None:
    response = httpx.post(f"{url}/v1/classify", files=UPLOAD, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["predictions"][0]["label"] in CAT_LABELS


@pytest.mark.parametrize("path", OPEN)
def test_health_metrics_and_the_pages_need_no_key(url: str, path: str) -> None:
    assert httpx.get(url + path, timeout=30).status_code == 200


def test_keys_never_reach_the_log(url: str, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="imgcls.serve"):
        httpx.get(f"{url}/v1/models", headers=_bearer("a-guess-7d1f"), timeout=30)
        assert httpx.get(f"{url}/v1/models", headers=_bearer(KEYS[0]), timeout=30).is_success
        page = httpx.get(f"{url}/", params={"key": KEYS[1], "lang": "en"}, timeout=30)
        assert page.status_code == 200
    assert '"GET /v1/models" 401' in caplog.text and '"GET /v1/models" 200' in caplog.text
    assert '"GET /?key=***&lang=en" 200' in caplog.text  # the page's address, key masked
    for secret in (*KEYS, "a-guess-7d1f"):
        assert secret not in caplog.text


def test_refusals_are_counted_in_metrics(url: str) -> None:
    httpx.get(f"{url}/v1/models", timeout=30)
    text = httpx.get(f"{url}/metrics", timeout=30).text
    refused = metric(
        text, "imgcls_http_requests_total", route="<unmatched>", method="GET", status="401"
    )
    assert refused >= 1


def test_metrics_auth_puts_metrics_behind_the_key_too() -> None:
    with thread_server(api_keys=KEYS[:1], metrics_auth=True) as url:
        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401
        assert httpx.get(f"{url}/metrics", headers=_bearer(KEYS[0]), timeout=30).is_success
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200


def test_tritonclient_sends_the_key_as_a_header(url: str) -> None:
    client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)
    try:
        image = triton.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([CAT], dtype=np.object_))
        assert client.is_server_ready()  # /v2/health/ready is open
        with pytest.raises(InferenceServerException, match="needs an API key"):
            client.infer(MODEL, [image])
        result = client.infer(MODEL, [image], headers={"X-API-Key": KEYS[0]})
        assert result.as_numpy("probabilities").shape == (1, 1000)
        metadata = client.get_model_metadata(MODEL, headers=_bearer(KEYS[1]))
        assert metadata["name"] == MODEL
    finally:
        client.close()


def test_the_openapi_page_shows_the_security_schemes(url: str) -> None:
    schema = httpx.get(f"{url}/openapi.json", timeout=30).json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer KEY",
    }
    assert schemes["apiKey"]["in"] == "header" and schemes["apiKey"]["name"] == "X-API-Key"
    assert schema["security"] == [{"bearer": []}, {"apiKey": []}]  # either one
    assert schema["paths"]["/healthz"]["get"]["security"] == []
    assert schema["paths"]["/v2/health/live"]["get"]["security"] == []
    assert "security" not in schema["paths"]["/v1/classify"]["post"]  # the global one


# -- the command: the key generated off loopback, --no-auth, the key options -------------


def test_off_loopback_without_a_key_one_is_generated_printed_and_saved_0600(
    tmp_path: Path,
) -> None:
    log = tmp_path / "server.log"
    state = tmp_path / "state"
    with process_server(log=log, host="0.0.0.0", env={"XDG_STATE_HOME": str(state)}) as (
        _,
        url,
    ):
        port = url.rsplit(":", 1)[1]
        key_file = state / "imgcls" / f"api-key-{port}"
        key = key_file.read_text().strip()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert len(key) >= 40  # 32 random bytes, base64url
        printed = re.findall(rf"http://\S+:{port}/\?key=(\S+)", log.read_text())
        assert printed == [key]  # printed once, with the web page's address
        assert str(key_file) in log.read_text()
        assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 401
        assert httpx.get(f"{url}/v1/models", headers=_bearer(key), timeout=30).is_success
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200


def test_no_auth_serves_off_loopback_without_a_key_and_says_so(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    state = tmp_path / "state"
    with process_server(
        "--no-auth", log=log, host="0.0.0.0", env={"XDG_STATE_HOME": str(state)}
    ) as (_, url):
        response = httpx.post(f"{url}/v1/classify", files=UPLOAD, timeout=60)
        assert response.status_code == 200, response.text
    assert "authentication is off (--no-auth)" in log.read_text()
    assert not state.exists()  # no key was made


def test_keys_from_the_environment_and_a_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text("# the ops team\nfile-key-71c0d2\n\n  file-key-99aa31  \n")
    env = {"IMGCLS_API_KEY": "env-key-a1 env-key-b2"}
    with process_server("--api-key-file", str(key_file), env=env) as (_, url):
        for key in ("env-key-a1", "env-key-b2", "file-key-71c0d2", "file-key-99aa31"):
            assert httpx.get(f"{url}/v1/models", headers=_bearer(key), timeout=30).is_success
        for key in ("# the ops team", "env-key-a1 env-key-b2", ""):
            assert httpx.get(f"{url}/v1/models", headers={"X-API-Key": key}).status_code == 401


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--api-key", "k-1d2e3f", "--no-auth"), "--api-key and --no-auth contradict"),
        (("--api-key", "has a space"), "API key 1 of 1 is not usable"),
        (("--api-key-file", "/no/such/keys.txt"), "/no/such/keys.txt"),
    ],
    ids=["key-and-no-auth", "unusable-key", "missing-key-file"],
)
def test_unusable_key_options_are_usage_errors_before_any_model_loads(
    args: tuple[str, ...], message: str
) -> None:
    run = run_cli("serve", "--port", "0", "--no-log", *args, timeout=60)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
    assert "has a space" not in run.stderr  # a key is never echoed
