"""In-process checks of the playground's serving side (no browser): `/`, its assets and
/playground/config need no API key while the API still does; strict security headers; nothing
loaded from outside the server; the package data ships every asset; Server-Timing on /encode and
/decode. The page itself is tested in a real browser in test_playground_browser.py."""
from __future__ import annotations

import fnmatch
import re
import sys
import time
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dgae.errors import ConfigError
from service.app import create_app
from service.playground import CONFIG_PATH, SECURITY_HEADERS, STATIC_DIR, install_playground
from service.core.settings import ServiceSettings
from service_cases import API_KEY, AUTH, png

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - py3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parent.parent
SAMPLES_BUDGET_BYTES = 200 * 1024
READY_WAIT_S = 60
ASSETS = {"playground.js": "text/javascript", "playground.css": "text/css", "favicon.svg": "image/svg+xml",
          "samples/astronaut.jpg": "image/jpeg"}
EXTERNAL_URL = re.compile(r"""(?:src|href|url|fetch)\s*[=(]\s*["'`]?\s*(?:https?:)?//""", re.I)



def make_client(checkpoint, **overrides) -> TestClient:
    settings = ServiceSettings(
        **{
            "backend": "torch",
            "checkpoint": str(checkpoint),
            "max_wait_ms": 5,
            "torch_threads": 1,
            "default_steps": 1,
            **overrides,
        }
    )
    return TestClient(create_app(settings))


@pytest.fixture(scope="module")
def client(tiny_checkpoint):
    with make_client(tiny_checkpoint, api_keys=(API_KEY,)) as c:
        deadline = time.monotonic() + READY_WAIT_S
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, c.get("/readyz").json()
            time.sleep(0.02)
        yield c


def test_page_needs_no_key_but_the_api_still_does(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/playground.js">' in page.text
    assert client.head("/").status_code == 200
    assert client.get(CONFIG_PATH).json() == {"auth_required": True}
    assert client.get("/v1/model").status_code == 401
    assert client.post("/encode", content=png(), headers={"Content-Type": "image/png"}).status_code == 401
    assert client.get("/v1/model", headers=AUTH).status_code == 200


def test_config_without_keys(tiny_checkpoint):
    with make_client(tiny_checkpoint, warmup=False) as c:
        assert c.get(CONFIG_PATH).json() == {"auth_required": False}


@pytest.mark.parametrize("path", ["/", CONFIG_PATH, *(f"/static/{a}" for a in ASSETS)])
def test_security_headers_on_every_playground_response(client, path):
    r = client.get(path)
    assert r.status_code == 200, r.text
    for name, value in SECURITY_HEADERS.items():
        assert r.headers[name] == value, name
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp


@pytest.mark.parametrize("asset,media", ASSETS.items())
def test_assets_served_with_their_types(client, asset, media):
    r = client.get(f"/static/{asset}")
    assert r.status_code == 200 and r.headers["content-type"].split(";")[0] == media
    assert r.content == (STATIC_DIR / asset).read_bytes()


@pytest.mark.parametrize("path", ["/static/../service/app.py", "/static/%2e%2e/service/app.py", "/static/nope.js",
                                  "/static/../../pyproject.toml"])
def test_no_files_outside_static_and_json_404(client, path):
    r = client.get(path)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_page_is_offline_only_same_origin_references():
    for path in STATIC_DIR.glob("*.*"):
        if path.suffix in (".html", ".js", ".css"):
            text = path.read_text()
            assert not EXTERNAL_URL.search(text), f"{path.name} references another origin"
    html = (STATIC_DIR / "index.html").read_text()
    for ref in re.findall(r"""(?:src|href)="(/static/[^"]+)\"""", html):
        assert (STATIC_DIR / ref.removeprefix("/static/")).is_file(), ref


def test_samples_are_small_and_documented():
    samples = sorted((STATIC_DIR / "samples").glob("*.jpg"))
    assert samples and sum(p.stat().st_size for p in samples) < SAMPLES_BUDGET_BYTES
    sources = (STATIC_DIR / "samples" / "SOURCES.txt").read_text()
    assert all(p.name in sources for p in samples)


def test_package_data_ships_every_static_file():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["service"]
    for path in STATIC_DIR.rglob("*"):
        if path.is_file():
            rel = path.relative_to(STATIC_DIR.parent).as_posix()
            assert any(fnmatch.fnmatch(rel, p) and rel.count("/") == p.count("/") for p in patterns), \
                f"{rel} is not in [tool.setuptools.package-data] service"


def test_playground_routes_stay_out_of_the_openapi_schema(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and CONFIG_PATH not in paths


def test_missing_page_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="package data"):
        install_playground(FastAPI(), static_dir=tmp_path)


def test_server_timing_on_encode_and_decode(client):
    enc = client.post("/encode", content=png(16, 16), headers={"Content-Type": "image/png", **AUTH})
    assert enc.status_code == 200, enc.text
    assert re.fullmatch(r'encode;dur=\d+\.\d;desc="queue \+ model"', enc.headers["server-timing"])
    dec = client.post("/decode", content=enc.content, headers=AUTH)
    assert dec.status_code == 200, dec.text
    m = re.fullmatch(r'decode;dur=(\d+\.\d);desc="queue \+ model"', dec.headers["server-timing"])
    assert m and float(m.group(1)) > 0


def test_static_requests_are_counted_under_the_mount(client):
    client.get("/static/playground.css")
    client.get("/static/missing.css")
    text = client.get("/metrics").text
    assert 'dgae_requests_total{route="/static",status="200"}' in text
    assert 'dgae_requests_total{route="/static",status="404"}' in text
    assert 'route="/static/playground.css"' not in text
