"""/docs (Swagger UI) and /redoc (ReDoc) work offline: their pages reference only the service's own
URLs, which answer 200 with the assets of the fastapi-offline package; in a real headless Chromium
with every non-loopback request blocked both pages render the API's operations, and no request
leaves the origin (ReDoc's CDN logo is refused by the page's Content-Security-Policy)."""
from __future__ import annotations

import re
import threading
import time
from urllib.parse import urlparse

import pytest
import uvicorn
from fastapi.testclient import TestClient

from playground_browser import ConsoleLog, browser_unavailable, launch, sync_playwright
from service.app import create_app
from service.core.settings import ServiceSettings
from service_cases import free_port

ASSET_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
URL_PATTERN = re.compile(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""")
START_TIMEOUT_S = 30
RENDER_TIMEOUT_MS = 60_000
POLL_S = 0.05
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"  # in redoc.standalone.js; hidden when it fails


@pytest.fixture(scope="module")
def app(tiny_checkpoint):
    return create_app(ServiceSettings(checkpoint=str(tiny_checkpoint), backend="torch", api_keys=("k",),
                                      warmup=False))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_reference_only_local_urls_that_answer(app, page):
    with TestClient(app) as c:
        r = c.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        urls = URL_PATTERN.findall(r.text)
        assert len(urls) >= 3, r.text  # script, favicon, the OpenAPI document (and the stylesheet)
        for url in urls:
            assert not urlparse(url).netloc and url.startswith("/"), f"{page} loads {url} from elsewhere"
            got = c.get(url)
            assert got.status_code == 200, url
            kind = ASSET_TYPES.get(url[url.rfind("."):], "application/json")
            assert kind in got.headers["content-type"], (url, got.headers["content-type"])
        assert "cdn" not in r.text.lower() and "fonts.googleapis" not in r.text
        assert "default-src 'none'" in r.headers["content-security-policy"]


def test_docs_assets_are_the_real_bundles(app):
    with TestClient(app) as c:
        assert len(c.get("/docs-static/swagger-ui-bundle.js").content) > 100_000
        assert len(c.get("/docs-static/redoc.standalone.js").content) > 100_000
        assert c.get("/docs-static/nope.js").status_code == 404
        doc = c.get("/openapi.json").json()
    assert not {"/docs", "/redoc"} & set(doc["paths"])


@pytest.fixture(scope="module")
def live_url(app):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(POLL_S)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(START_TIMEOUT_S)


@pytest.mark.server
@pytest.mark.skipif(browser_unavailable() is not None, reason=browser_unavailable() or "")
@pytest.mark.parametrize("page, rendered", [("/docs", ".swagger-ui .opblock-summary-path"),
                                            ("/redoc", "[data-section-id^='operation/']")])
def test_docs_render_in_chromium_without_internet(live_url, page, rendered):
    outside: list[str] = []

    def only_loopback(route):
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = launch(p)
        try:
            tab = browser.new_page()
            log = ConsoleLog(tab)
            tab.route("**/*", only_loopback)
            tab.goto(live_url + page)
            tab.wait_for_selector(rendered, timeout=RENDER_TIMEOUT_MS)
            text = tab.inner_text("body")
        finally:
            browser.close()
    assert "/decode" in text and "/v2/models/{model_name}/infer" in text
    assert outside == [], f"{page} tried to reach {outside}"
    assert not log.page_errors, log.page_errors
    refused = [e for e in log.errors if "Content Security Policy" in e]
    assert all(REDOC_LOGO in e for e in refused) and len(refused) == len(log.errors), log.errors
