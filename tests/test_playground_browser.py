"""The playground page end to end in a real headless Chromium (Playwright driving the system's
chromium) against a real `dgae serve` on loopback with the bundled model, an API key and a small
pixel limit.

Upload a photo, wait for the reconstruction, read the PSNR the page shows and recompute it here
from the two images the page had (the uploaded file and the /decode response it fetched): same
definition (8-bit RGB at the original size, MSE over all channels), within PSNR_TOLERANCE_DB.
Also: the 413 message of an oversized upload shown on the page, the API-key prompt, decode again /
4-seed variability, downloads and latents upload, phone width and keyboard use. Screenshots go to
the test's tmp dir (``playground-screenshots*``; keep them with ``--basetemp``). The console must
stay free of errors apart from Chromium's own network line for an expected HTTP error."""
from __future__ import annotations

import io
import json
import math
import re
import struct
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from PIL import Image
from safetensors.numpy import load as st_load

from dgae.checkpoint import BUNDLED_CHECKPOINT
from playground_browser import ConsoleLog, browser_unavailable, launch, psnr, rgb, sync_playwright
from service_cases import API_KEY, AUTH, serve

pytestmark = [pytest.mark.server, pytest.mark.skipif(browser_unavailable() is not None,
                                                     reason=browser_unavailable() or "")]

PSNR_TOLERANCE_DB = 0.05
MAX_PIXELS = 256 * 256  # server limit for this module: PHOTO fits, BIG does not
PHOTO_SIZE = (250, 190)  # (w, h): not multiples of f, so encode pads and decode crops back
BIG_SIZE = (320, 240)
SAMPLES = Path(__file__).resolve().parent.parent / "service" / "static" / "samples"
DESK = {"width": 1280, "height": 900}
PHONE = {"width": 360, "height": 740}
OP_TIMEOUT_MS = 120_000  # one encode/decode round on a shared 2-core CPU
VARIABILITY_SEEDS = 4
HTTP_TIMEOUT_S = 60


def safe_open_metadata(data: bytes) -> dict:
    """The __metadata__ of a safetensors payload (its 8-byte little-endian header length, then JSON)."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n])["__metadata__"]


def path_of(url: str) -> str:
    return urlparse(url).path


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    checkpoint = BUNDLED_CHECKPOINT if BUNDLED_CHECKPOINT.is_file() else request.getfixturevalue("tiny_checkpoint")
    flags = ["--api-keys", API_KEY, "--max-pixels", str(MAX_PIXELS), "--torch-threads", "1", "--max-wait-ms", "20"]
    with serve(checkpoint, tmp_path_factory.mktemp("playground-server"), *flags) as s:
        yield s


@pytest.fixture(scope="module")
def model(server) -> dict:
    return httpx.get(server.url + "/v1/model", headers=AUTH, timeout=HTTP_TIMEOUT_S).json()


@pytest.fixture(scope="module")
def tile_routes(server) -> set[str]:
    """Routes whose OpenAPI description has a `tile` query parameter (the page sends it only there)."""
    spec = httpx.get(server.url + "/openapi.json", timeout=HTTP_TIMEOUT_S).json()
    return {p for p in ("/encode", "/decode")
            if any(q["name"] == "tile" for q in spec["paths"][p]["post"].get("parameters", []))}


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("playground-screenshots")


def photo_file(directory: Path, name: str, size: tuple[int, int]) -> Path:
    """A PNG crop of a bundled sample photo (PNG: the browser and PIL decode it identically)."""
    img = Image.open(SAMPLES / "coffee.jpg").convert("RGB")
    if img.width < size[0] or img.height < size[1]:
        img = img.resize(size, Image.LANCZOS)
    path = directory / name
    img.crop((0, 0, *size)).save(path, "PNG")
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    return photo_file(tmp_path_factory.mktemp("photos"), "coffee_crop.png", PHOTO_SIZE)


@pytest.fixture(scope="module")
def big_photo(tmp_path_factory) -> Path:
    return photo_file(tmp_path_factory.mktemp("photos"), "too_big.png", BIG_SIZE)


# wait_for_function gets arrow functions, never bare expressions: Playwright evaluates expressions with
# eval(), which the page's Content-Security-Policy (script-src 'self') rightly refuses.
def runs(page) -> int:
    return int(page.get_attribute("body", "data-runs") or 0)


def run_and_wait(page, action) -> str:
    """Do ``action`` (which starts one operation) and wait until the page reports it finished."""
    before = runs(page)
    action()
    page.wait_for_function("n => Number(document.body.dataset.runs || 0) > n", arg=before, timeout=OP_TIMEOUT_MS)
    return page.get_attribute("body", "data-state")


def wait_state(page, state: str) -> None:
    page.wait_for_function("s => document.body.dataset.state === s", arg=state, timeout=OP_TIMEOUT_MS)


def page_error(page) -> str:
    return page.inner_text("#error") if page.is_visible("#error") else "(no error shown)"


def new_page(browser, viewport=DESK):
    """A page in its own context (no shared state), with every wait bounded by OP_TIMEOUT_MS."""
    context = browser.new_context(viewport=viewport, accept_downloads=True)
    context.set_default_timeout(OP_TIMEOUT_MS)
    page = context.new_page()
    return page, ConsoleLog(page)


def open_page(browser, server, viewport=DESK):
    """The page, authenticated with the server's key and ready."""
    page, log = new_page(browser, viewport)
    page.goto(server.url + "/")
    wait_state(page, "auth")
    page.fill("#api-key", API_KEY)
    page.press("#api-key", "Enter")
    wait_state(page, "ready")
    return page, log


def upload(page, photo: Path):
    """Upload ``photo``; returns the (encode request, encode response, decode response) the page made."""
    with page.expect_request(lambda r: path_of(r.url) == "/encode") as enc_req, \
            page.expect_response(lambda r: path_of(r.url) == "/encode") as enc_res, \
            page.expect_response(lambda r: path_of(r.url) == "/decode") as dec_res:
        state = run_and_wait(page, lambda: page.set_input_files("#file", str(photo)))
    assert state == "done", page_error(page)
    return enc_req.value, enc_res.value, dec_res.value


def shown_psnr(page) -> float:
    text = page.inner_text("#psnr")
    m = re.fullmatch(r"(\d+\.\d+) dB", text)
    assert m, f"PSNR shown as {text!r}"
    return float(m.group(1))


def assert_psnr_matches(page, original: bytes, reconstruction: bytes) -> float:
    a, b = rgb(original), rgb(reconstruction)
    assert a.shape == b.shape, f"reconstruction {b.shape[1]}x{b.shape[0]} is not the original's size"
    expected, shown = psnr(a, b), shown_psnr(page)
    assert abs(shown - expected) <= PSNR_TOLERANCE_DB, f"page shows {shown} dB, computed {expected:.4f} dB"
    return expected


def server_timing_ms(response, op: str) -> float:
    m = re.search(rf"{op};dur=([0-9.]+)", response.headers.get("server-timing", ""))
    assert m, f"no Server-Timing for {op}: {response.headers}"
    return float(m.group(1))


def test_upload_shows_reconstruction_heatmap_and_the_psnr_the_test_recomputes(browser, server, model, tile_routes,
                                                                               photo, shots):
    page, log = open_page(browser, server)
    enc_req, enc_res, dec_res = upload(page, photo)
    original, reconstruction = photo.read_bytes(), dec_res.body()
    assert enc_req.headers.get("authorization") == f"Bearer {API_KEY}"
    assert enc_req.headers["content-type"].startswith("multipart/form-data")
    meta = json.loads(safe_open_metadata(enc_res.body())["dgae"])["images"][0]
    assert (meta["name"], meta["orig_width"], meta["orig_height"]) == (photo.name, *PHOTO_SIZE)
    expected = assert_psnr_matches(page, original, reconstruction)

    w, h = PHOTO_SIZE
    heat = page.evaluate("""() => { const c = document.getElementById('heatmap');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lo = 255, hi = 0;
        for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
        return [c.width, c.height, hi - lo]; }""")
    assert heat[:2] == [w, h] and heat[2] > 0, f"heatmap not drawn: {heat}"

    c, lh, lw = (int(v) for v in enc_res.headers["x-dgae-shape"].split(",")[1:])
    assert (c, lh, lw) == (model["latent_channels"], -(-h // model["downsample_factor"]),
                           -(-w // model["downsample_factor"]))
    assert page.inner_text("#latent-size").startswith(f"{c}×{lh}×{lw} = {c * lh * lw:,} values")
    assert f"{3 * w * h / (c * lh * lw):.1f}× fewer numbers" in page.inner_text("#ratio")
    assert page.locator("#channels canvas").count() == c
    assert page.eval_on_selector("#channels canvas", "c => [c.width, c.height]") == [lw, lh]

    ms = server_timing_ms(dec_res, "decode")
    shown_ms = math.floor(ms + 0.5)  # JavaScript's Math.round (half up); Python's round() is half to even
    assert page.inner_text("#decode-ms").startswith(f"{shown_ms} ms"), page.inner_text("#decode-ms")
    query = parse_qs(urlparse(dec_res.url).query)
    assert query["steps"] == [str(model["steps"]["default"])]
    assert ("tile" in query) == ("/decode" in tile_routes), f"tile sent: {query}; server offers it on {tile_routes}"
    assert ("tile" in parse_qs(urlparse(enc_req.url).query)) == ("/encode" in tile_routes)
    assert f"seed {dec_res.headers['x-dgae-seeds']}" in page.inner_text("#seed-used")

    page.screenshot(path=shots / "roundtrip.png", full_page=True)
    print(f"PSNR shown {page.inner_text('#psnr')}, computed {expected:.4f} dB; screenshots in {shots}")
    log.assert_clean()


def test_sample_by_keyboard_then_decode_again_and_four_seed_variability(browser, server, shots):
    page, log = open_page(browser, server)
    sample = SAMPLES / "astronaut.jpg"
    page.focus("button[data-sample='astronaut.jpg']")
    with page.expect_response(lambda r: path_of(r.url) == "/decode") as first:
        assert run_and_wait(page, lambda: page.keyboard.press("Enter")) == "done", page_error(page)
    # the sample is a JPEG: the browser's and PIL's decoders may differ by a level here and there
    assert Image.open(io.BytesIO(first.value.body())).size == Image.open(sample).size
    first_seed = first.value.headers["x-dgae-seeds"]

    page.focus("#again")
    with page.expect_response(lambda r: path_of(r.url) == "/decode") as again:
        assert run_and_wait(page, lambda: page.keyboard.press("Enter")) == "done", page_error(page)
    assert again.value.headers["x-dgae-seeds"] != first_seed
    assert f"seed {again.value.headers['x-dgae-seeds']}" in page.inner_text("#seed-used")

    decodes = []
    page.on("response", lambda r: decodes.append(r) if path_of(r.url) == "/decode" else None)
    assert run_and_wait(page, lambda: page.click("#vary")) == "done", page_error(page)
    seeds = sorted(int(r.headers["x-dgae-seeds"]) for r in decodes)
    assert len(seeds) == VARIABILITY_SEEDS and seeds == list(range(seeds[0], seeds[0] + VARIABILITY_SEEDS)), seeds
    assert page.is_visible("#variability-figure")
    size = page.eval_on_selector("#variability", "c => [c.width, c.height]")
    assert size == list(Image.open(sample).size)
    page.screenshot(path=shots / "variability.png", full_page=True)
    log.assert_clean()


def test_downloads_and_decoding_uploaded_latents(browser, server, photo, tmp_path):
    page, log = open_page(browser, server)
    _, enc_res, dec_res = upload(page, photo)
    with page.expect_download() as got:
        page.click("#dl-latents")
    latents_path = tmp_path / got.value.suggested_filename
    got.value.save_as(latents_path)
    assert latents_path.name == "coffee_crop.safetensors"
    assert latents_path.read_bytes() == enc_res.body()
    assert st_load(latents_path.read_bytes())["latents"].shape == tuple(
        int(v) for v in enc_res.headers["x-dgae-shape"].split(","))
    with page.expect_download() as got:
        page.click("#dl-recon")
    assert Path(got.value.path()).read_bytes() == dec_res.body()
    assert got.value.suggested_filename == (f"coffee_crop_rec_seed{dec_res.headers['x-dgae-seeds']}"
                                            f"_steps{dec_res.headers['x-dgae-steps']}.png")

    with page.expect_request(lambda r: path_of(r.url) == "/decode") as req, \
            page.expect_response(lambda r: path_of(r.url) == "/decode") as res:
        state = run_and_wait(page, lambda: page.set_input_files("#latents-file", str(latents_path)))
    assert state == "done", page_error(page)
    assert req.value.post_data_buffer == enc_res.body()
    assert Image.open(io.BytesIO(res.value.body())).size == PHOTO_SIZE  # metadata carried the crop
    assert page.inner_text("#psnr") == "– (no original)"
    assert page.locator("#channels canvas").count() > 0
    log.assert_clean()


def test_oversized_image_shows_the_services_413_message(browser, server, big_photo, photo, shots):
    refused = httpx.post(server.url + "/encode?fit=pad", headers=AUTH, timeout=HTTP_TIMEOUT_S,
                         files={"image": (big_photo.name, big_photo.read_bytes(), "image/png")})
    assert refused.status_code == 413, refused.text
    message = refused.json()["error"]["message"]

    page, log = open_page(browser, server)
    with page.expect_response(lambda r: path_of(r.url) == "/encode") as enc:
        state = run_and_wait(page, lambda: page.set_input_files("#file", str(big_photo)))
    assert enc.value.status == 413
    assert state == "error"
    assert page.is_visible("#error")
    assert page.inner_text("#error-message") == message
    assert page.inner_text("#error").startswith("The service answered 413 (too_large): ")
    assert page.inner_text("#psnr") == "–"  # nothing stale from an earlier run
    page.screenshot(path=shots / "too-large.png", full_page=True)
    # the page stays usable: the next upload works
    upload(page, photo)
    assert not page.is_visible("#error")
    log.assert_clean((413, "/encode"))


def test_asks_for_the_api_key_and_shows_the_services_401_message(browser, server):
    page, log = new_page(browser)
    api_calls = []
    page.on("request", lambda r: api_calls.append(path_of(r.url))
            if path_of(r.url) in ("/v1/model", "/encode", "/decode") else None)
    page.goto(server.url + "/")
    wait_state(page, "auth")
    assert page.is_visible("#auth") and page.evaluate("document.activeElement.id") == "api-key"
    assert api_calls == [], "the page called the API before it had a key"
    assert "Bearer" not in page.content().replace("Authorization: Bearer", "")

    page.fill("#api-key", "wrong-key")
    assert run_and_wait(page, lambda: page.press("#api-key", "Enter")) == "error"
    assert page.inner_text("#error").startswith("The service answered 401 (unauthorized): ")
    assert page.is_visible("#auth")
    page.fill("#api-key", API_KEY)
    page.click("#auth-form button[type=submit]")
    wait_state(page, "ready")
    assert not page.is_visible("#auth")
    assert page.is_enabled("#steps") and page.get_attribute("#steps", "max")
    log.assert_clean((401, "/v1/model"))


def test_image_chosen_before_the_key_waits_for_it(browser, server, photo):
    page, log = new_page(browser)
    page.goto(server.url + "/")
    wait_state(page, "auth")
    page.set_input_files("#file", str(photo))
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Image loaded')")
    assert page.get_attribute("body", "data-state") == "auth" and page.is_disabled("#run")
    page.fill("#api-key", API_KEY)
    page.press("#api-key", "Enter")
    wait_state(page, "ready")
    with page.expect_response(lambda r: path_of(r.url) == "/decode") as dec:
        assert run_and_wait(page, lambda: page.click("#run")) == "done", page_error(page)
    assert_psnr_matches(page, photo.read_bytes(), dec.value.body())
    log.assert_clean()


def test_phone_width_labels_and_no_horizontal_scroll(browser, server, photo, shots):
    page, log = open_page(browser, server, viewport=PHONE)
    upload(page, photo)
    widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1], f"page scrolls sideways at {PHONE['width']} px: {widths}"
    unlabelled = page.evaluate("""[...document.querySelectorAll('input, select')]
        .filter(el => el.type !== 'hidden' && el.labels.length === 0).map(el => el.id)""")
    assert unlabelled == []
    page.screenshot(path=shots / "phone.png", full_page=True)
    log.assert_clean()
