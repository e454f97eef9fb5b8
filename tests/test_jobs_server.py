"""A real `dgae serve` with the bundled model (the tiny checkpoint when it is absent): a 2048² decode
at the default steps is served or refused up front with its estimate and the jobs route, never a 504
after computing; a 16,777,216 x 1 PNG is refused by admission at its padded, tiled size."""
from __future__ import annotations

import io

import httpx
import pytest
import torch
from PIL import Image
from safetensors.torch import save as st_save

from service_cases import API_KEY, AUTH, serve

pytestmark = pytest.mark.server

SIDE = 2048
F = 8
C = 4
HTTP_TIMEOUT_S = 300
THIN_WIDTH = 4096 * 4096  # the default max_pixels: allowed as an image, 8 rows once padded


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    from dgae.checkpoint import BUNDLED_CHECKPOINT

    checkpoint = BUNDLED_CHECKPOINT if BUNDLED_CHECKPOINT.is_file() else request.getfixturevalue("tiny_checkpoint")
    work = tmp_path_factory.mktemp("jobs-server")
    with serve(checkpoint, work, "--api-keys", API_KEY, "--jobs-dir", str(work / "jobs")) as s:
        yield s


def test_large_sync_decode_is_served_or_refused_up_front(server):
    body = st_save({"latents": torch.randn(1, C, SIDE // F, SIDE // F, generator=torch.Generator().manual_seed(0))})
    r = httpx.post(server.url + "/decode", content=body, headers=AUTH, timeout=HTTP_TIMEOUT_S)
    if r.status_code == 200:  # a fast device
        assert Image.open(io.BytesIO(r.content)).size == (SIDE, SIDE)
        return
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert err["code"] == "over_deadline"
    for needle in ("estimated at", "megapixel-step", "deadline of 120 s", "POST /v1/jobs/decode"):
        assert needle in err["message"], err


def test_thin_image_is_refused_at_its_padded_tiled_size(server):
    buf = io.BytesIO()
    Image.new("RGB", (THIN_WIDTH, 1)).save(buf, format="PNG")
    r = httpx.post(server.url + "/encode", content=buf.getvalue(), timeout=HTTP_TIMEOUT_S,
                   headers={**AUTH, "Content-Type": "image/png"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large", r.text
    assert int(r.json()["error"]["message"].split(" holds ")[1].split()[0]) >= THIN_WIDTH * F
