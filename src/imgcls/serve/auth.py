"""Who may call the server: API keys, required on every request but the open paths.

A key travels as `Authorization: Bearer KEY` or `X-API-Key: KEY`. Keys are compared as
SHA-256 digests, every key each time, with `hmac.compare_digest`: how long a check takes
says nothing about which key or how much of one matched. A missing or wrong key is 401
with the JSON error shape and `WWW-Authenticate: Bearer`; no key is ever logged.

Secure by default (`resolve_auth`, called by `run`): bound to an address other machines
may reach, with no key given and no `no_auth`, the server makes a random key, writes it to
a file only its user can read and prints it once with the web page's address, as Jupyter
prints its token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import socket
import tempfile
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from imgcls.errors import ConfigError
from imgcls.serve.errors import ApiError, error_response

if TYPE_CHECKING:
    from fastapi import FastAPI

    from imgcls.serve.service import ServeConfig

__all__ = [
    "KEY_HEADER",
    "ApiKeyMiddleware",
    "ApiKeys",
    "is_loopback",
    "key_file_path",
    "protect",
    "read_key_file",
    "resolve_auth",
]

log = logging.getLogger("imgcls.serve")

KEY_HEADER = "X-API-Key"
METRICS_PATH = "/metrics"
# Open without a key: the probes of load balancers and Kubernetes, and the pages that are
# only code: the web page asks for the key itself, and /docs needs the schema to offer its
# "Authorize" button. Exact paths, as the router matches them.
OPEN_PATHS = frozenset(
    {"/healthz", "/readyz", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
OPEN_PREFIX = "/v2/health/"  # live, ready

_USABLE_KEY = re.compile(r"[!-~]+")  # printable ASCII without spaces: what a header carries
_MISSING = f"this server needs an API key: send 'Authorization: Bearer KEY' or '{KEY_HEADER}: KEY'"
_WRONG = "the API key sent is not one this server accepts"


class ApiKeys:
    """The keys a server accepts; `accepts(key)` compares in constant time."""

    def __init__(self, keys: Iterable[str]) -> None:
        keys = tuple(keys)
        if not keys:
            raise ConfigError("no API keys given", parameters=("api_keys",))
        for number, key in enumerate(keys, 1):
            if not _USABLE_KEY.fullmatch(key):  # the message never shows the key
                raise ConfigError(
                    f"API key {number} of {len(keys)} is not usable: a key is printable ASCII "
                    f"without spaces (it travels in an HTTP header), got {len(key)} characters",
                    parameters=("api_keys",),
                )
        self._digests = tuple(hashlib.sha256(key.encode()).digest() for key in keys)

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"ApiKeys(<{len(self)} keys>)"

    def accepts(self, key: str | bytes) -> bool:
        digest = hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()
        matched = False
        for known in self._digests:  # no early exit: every check takes as long
            matched |= hmac.compare_digest(digest, known)
        return matched


class ApiKeyMiddleware:
    """Answers 401 to an HTTP request without an accepted key, unless its path is open.
    Pure ASGI: a check costs a header scan and one SHA-256, before the body is read."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, open_paths: frozenset[str]) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_open(scope["path"], self.open_paths):
            await self.app(scope, receive, send)
            return
        key = _presented_key(scope["headers"])
        if key is not None and self.keys.accepts(key):
            await self.app(scope, receive, send)
            return
        error = ApiError(
            401,
            "Unauthorized",
            _MISSING if key is None else _WRONG,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await error_response(scope["path"], error)(scope, receive, send)


def protect(app: FastAPI, keys: ApiKeys, metrics_auth: bool) -> None:
    """Require one of `keys` on `app` (and on /metrics with `metrics_auth`), and say so in
    its OpenAPI schema. Middleware added later runs before this check."""
    open_paths = OPEN_PATHS if metrics_auth else OPEN_PATHS | {METRICS_PATH}
    app.add_middleware(ApiKeyMiddleware, keys=keys, open_paths=open_paths)
    _document_security(app, open_paths)


def _is_open(path: str, open_paths: frozenset[str]) -> bool:
    return path in open_paths or path.startswith(OPEN_PREFIX)


def _presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key of `Authorization: Bearer KEY` or `X-API-Key: KEY`, whichever comes first."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() == b"bearer":
                return credentials.strip()
        elif name == b"x-api-key":
            return value.strip()
    return None


def read_key_file(path: str | os.PathLike) -> tuple[str, ...]:
    """The keys in a text file, one per line; blank lines and `#` comments are skipped."""
    lines = (line.strip() for line in Path(path).read_text("utf-8").splitlines())
    keys = tuple(line for line in lines if line and not line.startswith("#"))
    if not keys:
        raise ConfigError(f"{path}: no API keys in it (one per line; '#' starts a comment)")
    return keys


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (a host name other than localhost may
    resolve to any address, so it counts as reachable)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def key_file_path(port: int) -> Path:
    """Where a generated key for `port` is kept: $XDG_STATE_HOME/imgcls/api-key-PORT
    (~/.local/state/imgcls/ by default), one file per port so that servers side by side
    keep theirs."""
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "imgcls" / f"api-key-{port}"


def resolve_auth(config: ServeConfig) -> ServeConfig:
    """`config` with the keys the server will require: those given, none (loopback, or
    `no_auth`, said in the log), or a new random key (see the module)."""
    where = f"{config.host}:{config.port}"
    if config.no_auth:
        if config.api_keys:
            raise ConfigError(
                "`api_keys` and `no_auth` contradict each other; give one",
                parameters=("api_keys", "no_auth"),
            )
        log.warning(
            "authentication is off (--no-auth): anyone who can reach %s may classify, explain "
            "and store images",
            where,
        )
        return config
    if config.api_keys:
        log.info(
            "API key required (%d accepted) on every endpoint but /healthz, /v2/health/*%s",
            len(config.api_keys),
            "" if config.metrics_auth else " and /metrics",
        )
        return config
    if is_loopback(config.host):
        return config
    key = secrets.token_urlsafe(32)  # 256 bits
    path = key_file_path(config.port)
    try:
        _write_private(path, key + "\n")
        saved = f"saved in {path} (readable only by this user)"
    except OSError as exc:  # a read-only home in a container: the log is the only copy
        saved = f"not saved ({path}: {exc.strerror or exc}); it is shown here only"
    log.warning(
        "no API key given and bound to %s, which other machines may reach: generated one, "
        "%s. Clients send 'Authorization: Bearer KEY'. Open the web page at:\n    %s",
        config.host,
        saved,
        _page_url(config.host, config.port, key),
    )
    return replace(config, api_keys=(key,))


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable and writable by this user only from the start."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _page_url(host: str, port: int, key: str) -> str:
    if host in ("0.0.0.0", "::", ""):  # every interface: the machine's name reaches one
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/?key={key}"


def _document_security(app: FastAPI, open_paths: frozenset[str]) -> None:
    """Declare the two ways to send a key in the app's OpenAPI schema (so /docs shows an
    "Authorize" button), and mark the open paths as needing none. Only the schema: the
    middleware does the checking, with no per-request dependency."""
    build = app.openapi
    schemes = {
        "bearer": HTTPBearer(description="Authorization: Bearer KEY").model,
        "apiKey": APIKeyHeader(name=KEY_HEADER, description=f"{KEY_HEADER}: KEY").model,
    }

    def openapi() -> dict[str, Any]:
        schema = build()  # generated once and cached by FastAPI; amended once here
        components = schema.setdefault("components", {})
        if "securitySchemes" not in components:
            components["securitySchemes"] = {
                name: model.model_dump(mode="json", by_alias=True, exclude_none=True)
                for name, model in schemes.items()
            }
            schema["security"] = [{name: []} for name in schemes]  # either one
            for path, operations in schema.get("paths", {}).items():
                if _is_open(path, open_paths):
                    for operation in operations.values():
                        operation["security"] = []
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
