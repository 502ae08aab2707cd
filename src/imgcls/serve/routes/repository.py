"""Triton's model repository extension: list, load and unload the repository's models, so
`tritonclient.http`'s `get_model_repository_index`, `load_model` and `unload_model` work
as they do against Triton. Under /v2, so an API key is needed when the server has one.
Protocol: https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_model_repository.md
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from imgcls.serve.deps import ServiceDep
from imgcls.serve.errors import ApiError

router = APIRouter(prefix="/v2/repository", tags=["v2"])


class RepositoryEntry(BaseModel):
    name: str
    version: str
    state: str  # READY | UNAVAILABLE
    reason: str


@router.post("/index", response_model=list[RepositoryEntry])
async def index(request: Request, service: ServiceDep) -> list[RepositoryEntry]:
    """Every version in the repository, READY for the live one; `{"ready": true}` lists
    the live ones only."""
    ready_only = bool((await _body(request)).get("ready", False))
    entries = []
    for name, found in service.repository.items():
        live = service.models.get(name)
        for number in sorted(found.versions):
            version = str(number)
            if live is not None and live.version == version:
                entries.append(
                    RepositoryEntry(name=name, version=version, state="READY", reason="")
                )
            elif not ready_only:
                reason = service.refused.get((name, version), "not the live version")
                if name in service.unloaded:
                    reason = "unloaded"
                entries.append(
                    RepositoryEntry(name=name, version=version, state="UNAVAILABLE", reason=reason)
                )
    return entries


@router.post("/models/{name}/load")
async def load(name: str, request: Request, service: ServiceDep) -> JSONResponse:
    """Load `name` from the repository (its newest or pinned version), now. A config
    parameter with Triton's `version_policy: {"specific": {"versions": [N]}}` pins N."""
    parameters = (await _body(request)).get("parameters") or {}
    await service.load_from_repository(name, _pinned_version(parameters.get("config")))
    return JSONResponse({})


@router.post("/models/{name}/unload")
async def unload(name: str, service: ServiceDep) -> JSONResponse:
    """Stop serving `name`; its requests in flight finish first."""
    await service.unload(name)
    return JSONResponse({})


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"the body is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequest", "the body must be a JSON object")
    return body


def _pinned_version(config: Any) -> int | None:
    if config is None:
        return None
    try:
        policy = json.loads(config) if isinstance(config, str) else config
        versions = policy["version_policy"]["specific"]["versions"]
        (version,) = versions
        version = int(version)
    except (ValueError, TypeError, KeyError) as exc:
        raise ApiError(
            400,
            "BadRequest",
            'config must be {"version_policy": {"specific": {"versions": [N]}}} with one '
            f"version ({type(exc).__name__}: {exc})",
        ) from None
    if version < 1:
        raise ApiError(400, "BadRequest", f"versions are positive integers, got {version}")
    return version
