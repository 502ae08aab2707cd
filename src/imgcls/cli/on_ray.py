"""`--ray` for predict, features and evaluate: the option, its address checked before
anything loads, and Ray Data for one command (imgcls.ray)."""

from __future__ import annotations

import contextlib
import re
from enum import Enum
from types import ModuleType
from typing import Annotated

import typer

from imgcls.errors import ConfigError

__all__ = ["RayAddress", "imgcls_ray", "ray_address", "ray_backend", "ray_session"]

RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="[ADDRESS]",
        help="Run on Ray Data: a local Ray on this machine's cores, or the cluster at "
        "ADDRESS (auto, HOST:6379, ray://HOST:10001). See docs/scale.md.",
    ),
]
_ADDRESS = re.compile(r"(local|auto|ray://\S+|[\w.-]+:\d+)")


def ray_address(address: str | None) -> str | None:
    """--ray's ADDRESS, checked before anything is loaded (None: no --ray)."""
    if address is not None and not _ADDRESS.fullmatch(address):
        raise ConfigError(
            f"--ray {address!r} is not a Ray address (auto, HOST:6379, ray://HOST:10001); "
            "to start a local Ray, put --ray after the inputs or write --ray local"
        )
    if address is not None:
        imgcls_ray()  # installed?
    return address


def ray_session(address: str | None) -> contextlib.AbstractContextManager:
    """Ray for one command (imgcls.ray.session), or nothing without --ray."""
    return contextlib.nullcontext() if address is None else imgcls_ray().session(address)


def imgcls_ray() -> ModuleType:
    """imgcls.ray, or a usage error that says how to install Ray."""
    try:
        import imgcls.ray  # deferred: imports ray and pyarrow (the [ray] extra)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] not in ("ray", "pyarrow"):
            raise
        raise ConfigError("--ray needs Ray: pip install 'imgcls[ray]'") from None
    return imgcls.ray


def ray_backend(address: str | None, backend: Enum) -> str:
    """The backend a command runs: --ray ships an ONNX export to its actors, which run it
    as the driver's classifier does (ONNX Runtime, or OpenVINO at the precision chosen)."""
    if address is not None and backend.value == "torch":
        raise ConfigError("--ray runs ONNX exports; --backend torch does not go with it")
    return backend.value
