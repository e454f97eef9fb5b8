"""The web playground: ``GET /`` serves one static page, ``/static/...`` its CSS, JS and sample photos,
``GET /playground/config`` says whether the page must ask for an API key.

The page is plain HTML/CSS/JS shipped in the package (service/static/), no build step, no CDN, so it
works offline. It calls the service's own /v1/model, /encode and /decode routes from the browser.
These routes need no API key (like /healthz and /docs): the page holds no secret and no server
configuration; when the server sets ``DGAE_API_KEYS`` the page asks the user for a key and sends it
as ``Authorization: Bearer`` on its API calls (kept in the tab's memory, never stored).
Every response here carries a strict Content-Security-Policy (same-origin scripts, styles and
requests only; images also from blob:/data: URLs the page creates) and no-referrer.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from dgae.errors import ConfigError

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX_FILE = "index.html"
STATIC_PREFIX = "/static"
STATIC_ROUTE_NAME = "playground-static"
CONFIG_PATH = "/playground/config"
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # the page itself is tiny: always revalidate so a new release shows at once
    "Cache-Control": "no-cache",
}


class PlaygroundConfig(BaseModel):
    """What the page must know before its first API call (so it asks for a key instead of meeting a 401)."""

    auth_required: bool


class _StaticWithHeaders(StaticFiles):
    """StaticFiles + SECURITY_HEADERS; requests are labelled with the mount (route="/static" in the
    request metrics, instead of "unmatched")."""

    mount: Mount | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.mount is not None:
            scope["route"] = self.mount
        await super().__call__(scope, receive, send)

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def install_playground(app: FastAPI, static_dir: Path = STATIC_DIR) -> None:
    """Add ``GET /`` (the page) and ``/static`` (its assets) to ``app``; no API key needed for either."""
    index = static_dir / INDEX_FILE
    if not index.is_file():
        # a broken install (package data missing) must be loud at start, not a 404 page later
        raise ConfigError(f"playground page {index} is missing: is service/static in the package data?")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(index, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    @app.get(CONFIG_PATH, include_in_schema=False)
    async def playground_config(request: Request) -> JSONResponse:
        required = request.app.state.service.keys.enabled
        return JSONResponse(PlaygroundConfig(auth_required=required).model_dump(), headers=SECURITY_HEADERS)

    static = _StaticWithHeaders(directory=static_dir)
    static.mount = Mount(STATIC_PREFIX, app=static, name=STATIC_ROUTE_NAME)
    app.router.routes.append(static.mount)
