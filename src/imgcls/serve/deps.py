"""FastAPI dependencies shared by the route modules."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from imgcls.serve.service import Service

__all__ = ["ServiceDep"]


async def get_service(request: Request) -> Service:
    """The app's `Service` (its loaded models), set up by `create_app`.

    `async` although it awaits nothing: FastAPI runs a plain-def dependency in its thread
    pool, a thread hand-off on every request for one attribute read."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
