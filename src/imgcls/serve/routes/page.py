"""The web page: drop an image, see its top-5."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from imgcls.serve.deps import ServiceDep

router = APIRouter()


_INDEX_HTML = (resources.files("imgcls.serve") / "static" / "index.html").read_text("utf-8")


@router.get("/", include_in_schema=False)
async def index(request: Request, service: ServiceDep) -> HTMLResponse:
    """The web page: pick or drop an image, see its top-5 as bars and its heat map (whose
    first computation starts now, in the background). Open to all when keys are required
    (the page asks for one); only a caller with the key (`?key=`) starts the warm-up."""
    keys = request.app.state.api_keys
    if keys is None or keys.accepts(request.query_params.get("key", "")):
        service.warm_explainer()
    return HTMLResponse(_INDEX_HTML)
