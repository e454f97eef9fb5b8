"""API documentation pages served offline: ``GET /docs`` (Swagger UI) and ``GET /redoc`` (ReDoc) load
their JavaScript and CSS from ``/docs-static/...``, files shipped by the ``fastapi-offline`` package
(the swagger-ui-dist bundle and redoc.standalone.js), never from a CDN, so both pages work on a
machine without internet access. Like the probes, these pages and ``/openapi.json`` need no API key;
Swagger UI's "Authorize" button takes a key for the calls made from the page.

Both pages carry a Content-Security-Policy that keeps every request on this origin: ReDoc's bundle
shows a vendor logo from its CDN in the sidebar, which the policy refuses without a network request
(the bundle hides the image when it fails to load), so opening the docs never contacts a third party.
The pages initialise Swagger UI / ReDoc with an inline script and inline styles, hence
``'unsafe-inline'`` for those two (no user content is ever inlined into them).
"""
from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from dgae.errors import ConfigError

ASSETS_PACKAGE = "fastapi_offline"  # ships static/swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js
ASSETS_DIR = "static"
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
ASSETS_PREFIX = "/docs-static"
ASSETS_ROUTE_NAME = "docs-static"
DOCS_PATH, REDOC_PATH = "/docs", "/redoc"
DOCS_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' "
                                "'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
                                "worker-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def assets_dir():
    """The folder of the documentation assets; ConfigError when the package is missing or incomplete."""
    try:
        folder = resources.files(ASSETS_PACKAGE) / ASSETS_DIR
    except ModuleNotFoundError:
        raise ConfigError(f"the API docs need the {ASSETS_PACKAGE!r} package (pip install 'dgae-serve[serve]')") \
            from None
    missing = [name for name in ASSETS if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"{ASSETS_PACKAGE} lacks {', '.join(missing)} in {folder}")
    return folder


class _LabelledStatic(StaticFiles):
    """StaticFiles whose requests the metrics label with the mount (not "unmatched")."""

    mount: Mount | None = None

    async def __call__(self, scope, receive, send) -> None:
        if self.mount is not None:
            scope["route"] = self.mount
        await super().__call__(scope, receive, send)


def install_docs(app: FastAPI) -> None:
    """Add /docs, /docs/oauth2-redirect, /redoc and the assets; build the app with docs_url=None and
    redoc_url=None so FastAPI's CDN pages are not registered."""
    static = _LabelledStatic(directory=str(assets_dir()))
    static.mount = Mount(ASSETS_PREFIX, app=static, name=ASSETS_ROUTE_NAME)
    app.router.routes.append(static.mount)
    redirect = app.swagger_ui_oauth2_redirect_url

    def asset(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}{ASSETS_PREFIX}/{name}"

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _secured(get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
                                   oauth2_redirect_url=f"{root}{redirect}" if redirect else None,
                                   swagger_js_url=asset(request, "swagger-ui-bundle.js"),
                                   swagger_css_url=asset(request, "swagger-ui.css"),
                                   swagger_favicon_url=asset(request, "favicon.png"),
                                   swagger_ui_parameters=app.swagger_ui_parameters))

    if redirect:
        @app.get(redirect, include_in_schema=False)
        async def swagger_ui_redirect() -> HTMLResponse:
            return _secured(get_swagger_ui_oauth2_redirect_html())

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _secured(get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
                                       redoc_js_url=asset(request, "redoc.standalone.js"),
                                       redoc_favicon_url=asset(request, "favicon.png"), with_google_fonts=False))


def _secured(page: HTMLResponse) -> HTMLResponse:
    page.headers.update(DOCS_HEADERS)
    return page
