"""Admission by cost: the per-request pixel limit (413 before any pixel is decoded) and the in-flight
pixel budget shared by encode and decode (503 budget_full with Retry-After; an idle budget admits
any single request), released however a request ends; exposed in /metrics and /v1/model."""
from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from dgae.errors import TooLargeError
from formats.images import image_size
from service.core.admission import Admission, PixelBudget
from service.core.errors import BudgetFull
from service.core.metrics import ServiceMetrics
from service.core.settings import ServiceSettings
from service_cases import AUTH, C, F, latents, png, st_bytes
from test_service_app import (assert_json_error, make_client,
                              wait_ready, Wrapped)

GATE_WAIT_S = 60.0  # the longest a blocked backend call waits for its test (never reached when it passes)
BLOCK = 777.0  # latent value the test backend holds until released
SMALL = 2  # latent side: decodes to (SMALL*F)^2 pixels
SMALL_PIXELS = (SMALL * F) ** 2
BUDGET = SMALL_PIXELS + SMALL_PIXELS // 2  # room for one small request, not two


# --- units ------------------------------------------------------------------------------------------
def test_budget_admits_while_it_fits_and_refuses_beyond():
    budget = PixelBudget(100)
    assert budget.try_reserve(60) and budget.try_reserve(40)
    assert not budget.try_reserve(1) and budget.in_use == 100
    budget.release(60)
    assert budget.try_reserve(50) and budget.in_use == 90


def test_an_idle_budget_admits_one_request_larger_than_itself_and_nothing_beside_it():
    budget = PixelBudget(100)
    assert budget.try_reserve(500)
    assert not budget.try_reserve(1)
    budget.release(500)
    assert budget.in_use == 0 and budget.try_reserve(1)


def test_admission_names_the_limit_refuses_with_retry_after_and_releases_once():
    metrics = ServiceMetrics()
    adm = Admission(ServiceSettings(max_request_pixels=1000, inflight_pixels=600, retry_after_s=4), metrics)
    with pytest.raises(TooLargeError, match="limit of 1000 pixels per request"):
        adm.reserve("encode", 1001)
    first = adm.reserve("encode", 400)
    with pytest.raises(BudgetFull) as err:
        adm.reserve("decode", 300)
    assert err.value.status == 503 and err.value.headers == {"Retry-After": "4"}
    assert "400 of 600" in str(err.value)
    first.release()
    first.release()  # idempotent
    assert adm.budget.in_use == 0
    big = adm.reserve("decode", 900)  # over the budget, within the request limit, budget idle
    text = metrics.render().decode()
    assert 'dgae_inflight_pixels{operation="decode"} 900.0' in text
    assert 'dgae_inflight_pixels{operation="encode"} 0.0' in text
    assert "dgae_inflight_pixels_limit 600.0" in text
    assert 'dgae_budget_rejections_total{operation="decode"} 1.0' in text
    big.release()


def test_image_size_reads_only_the_header():
    data = png(24, 40)
    assert image_size(data) == (40, 24)
    assert image_size(data[:100]) == (40, 24)  # a truncated file: the pixels are not needed for its size


# --- the HTTP service -------------------------------------------------------------------------------
@pytest.fixture()
def gated(tiny_checkpoint):
    """(backend, gate, busy): decodes of BLOCK latents wait for the gate; busy is set when one starts."""
    from backends.torch_backend import TorchBackend  # noqa: PLC0415

    gate, busy = threading.Event(), threading.Event()

    def hook(op, t):
        if op == "decode" and (t == BLOCK).any():
            busy.set()
            gate.wait(GATE_WAIT_S)

    yield Wrapped(TorchBackend.from_checkpoint(tiny_checkpoint), hook), gate, busy
    gate.set()


def _gauge(text: str, name: str, operation: str) -> float:
    m = re.search(rf'^{name}\{{operation="{operation}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_images_over_the_request_limit_are_refused_before_any_pixel_is_decoded(tiny_checkpoint, monkeypatch):
    decoded = []
    import service.core.codecs as codecs  # noqa: PLC0415

    monkeypatch.setattr(codecs, "decode_image", lambda *a, **k: decoded.append(a) or pytest.fail("decoded"))
    with make_client(checkpoint=str(tiny_checkpoint), max_pixels=64 * 64, max_request_pixels=3 * 64 * 64) as c:
        wait_ready(c)
        files = [("image", (f"{i}.png", png(64, 64, seed=i), "image/png")) for i in range(4)]
        err = assert_json_error(c.post("/encode", files=files, headers=AUTH), 413,
                                f"limit of {3 * 64 * 64} pixels per request")
    assert err["code"] == "too_large" and str(4 * 64 * 64) in err["message"]
    assert decoded == []


def test_decode_cost_counts_a_resize_restored_to_its_original_size(tiny_checkpoint):
    meta = {"images": [dict(orig_height=120, orig_width=120, height=16, width=16, fit="resize")]}
    with make_client(checkpoint=str(tiny_checkpoint), max_request_pixels=100 * 100) as c:
        wait_ready(c)
        assert c.post("/decode", content=st_bytes(latents(1, SMALL, SMALL)), headers=AUTH).status_code == 200
        assert_json_error(c.post("/decode", content=st_bytes(latents(1, SMALL, SMALL), meta), headers=AUTH), 413,
                          "per request")


def test_budget_is_shared_by_both_operations_and_refuses_with_503_retry_after(gated):
    backend, gate, busy = gated
    with make_client(backend=backend, warmup=False, inflight_pixels=BUDGET, retry_after_s=2) as c, \
            ThreadPoolExecutor(1) as pool:
        wait_ready(c)
        blocker = pool.submit(c.post, "/decode", content=st_bytes(torch.full((1, C, SMALL, SMALL), BLOCK)),
                              headers=AUTH)
        assert busy.wait(GATE_WAIT_S)
        text = c.get("/metrics").text
        assert _gauge(text, "dgae_inflight_pixels", "decode") == SMALL_PIXELS
        for path, kwargs in (("/decode", {"content": st_bytes(latents(1, SMALL, SMALL))}),
                             ("/encode", {"content": png(SMALL * F, SMALL * F),
                                          "headers": {**AUTH, "Content-Type": "image/png"}})):
            r = c.post(path, **{"headers": AUTH, **kwargs})
            err = assert_json_error(r, 503, "in-flight pixels")
            assert err["code"] == "budget_full" and r.headers["retry-after"] == "2"
        gate.set()
        assert blocker.result().status_code == 200
        text = c.get("/metrics").text
    assert _gauge(text, "dgae_budget_rejections_total", "decode") == 1
    assert _gauge(text, "dgae_budget_rejections_total", "encode") == 1
    assert 'dgae_request_failures_total{reason="budget_full",route="/encode"} 1.0' in text


def test_a_request_larger_than_the_whole_budget_runs_when_the_budget_is_idle(tiny_checkpoint):
    with make_client(checkpoint=str(tiny_checkpoint), inflight_pixels=SMALL_PIXELS // 2) as c:
        wait_ready(c)
        for _ in range(2):  # not once by luck: every time the budget is idle
            r = c.post("/decode?format=npy", content=st_bytes(latents(2, SMALL, SMALL)), headers=AUTH)
            assert r.status_code == 200, r.text
        enc = c.post("/encode", content=png(SMALL * F, SMALL * F), headers={**AUTH, "Content-Type": "image/png"})
        assert enc.status_code == 200, enc.text
        text = c.get("/metrics").text
    assert _gauge(text, "dgae_inflight_pixels", "decode") == 0 and _gauge(text, "dgae_inflight_pixels", "encode") == 0


def test_reservations_are_released_however_the_request_ends(tiny_checkpoint):
    with make_client(checkpoint=str(tiny_checkpoint), inflight_pixels=SMALL_PIXELS) as c:
        wait_ready(c)
        hdr = {**AUTH, "Content-Type": "image/png"}
        assert c.post("/encode?format=json", content=png(128, 128), headers=hdr).status_code == 422  # after admit
        assert (
            c.post("/decode?seed=1,2,3", content=st_bytes(latents()), headers=AUTH).status_code == 400
        )  # before admit
        assert c.post("/encode", content=png(SMALL * F, SMALL * F), headers=hdr).status_code == 200
        assert c.post("/decode", content=st_bytes(latents(1, SMALL, SMALL)), headers=AUTH).status_code == 200
        text = c.get("/metrics").text
    assert _gauge(text, "dgae_inflight_pixels", "decode") == 0 and _gauge(text, "dgae_inflight_pixels", "encode") == 0


def test_model_info_lists_the_pixel_limits(tiny_checkpoint):
    with make_client(checkpoint=str(tiny_checkpoint), max_request_pixels=5000, inflight_pixels=7000) as c:
        wait_ready(c)
        limits = c.get("/v1/model", headers=AUTH).json()["limits"]
    assert limits["max_request_pixels"] == 5000 and limits["inflight_pixels"] == 7000
