"""GET /openapi.json and /docs (Swagger UI, its assets served from here: works without internet).

With API keys set both need one: a browser is asked for it (HTTP Basic: any user name, the key as password),
and the same credentials then go with the page's own requests.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from api.deps import require_api_key_browser

ASSETS_URL = "/docs/assets"
router = APIRouter(include_in_schema=False, dependencies=[Depends(require_api_key_browser)])


def assets() -> StaticFiles:
    """Swagger UI's own files (the `swagger-ui-bundle-v2` package), mounted at ASSETS_URL."""
    from swagger_ui_bundle import swagger_ui_path

    return StaticFiles(directory=Path(str(swagger_ui_path)))


@router.get("/openapi.json")
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.openapi.get())


@router.get("/docs")
async def docs(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{request.app.title} API",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png",
        swagger_ui_parameters={"persistAuthorization": True},
    )
