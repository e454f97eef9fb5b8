"""Defects found in review, each pinned: raw image bodies take every format a multipart part takes
(GIF, TIFF, PPM, ...: formats.images.READ_FORMATS is the one list), the v2 encoder's metadata lists
every datatype it accepts, and replaying every malformed input of both protocols (the 5000-digit
integers in JSON latents, v2 JSON data and safetensors metadata included) leaves no 5xx in /metrics."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest

from formats.images import READ_FORMATS
from kserve_cases import ENCODER, malformed_v2_requests, send_v2
from service_cases import AUTH, image_bytes, malformed_requests, send
from test_service_app import LIMITS, make_client, wait_ready

PIL_WRITERS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WEBP", "BMP": "BMP", "GIF": "GIF", "TIFF": "TIFF", "PPM": "PPM"}
# /readyz answers 503 while the model loads (wait_ready polls it): a probe's state, not a failure
SERVER_ERROR_LINE = re.compile(r'^dgae_requests_total\{route="(?!/readyz")([^"]*)",status="5\d\d"\} (\S+)$', re.M)


@pytest.fixture(scope="module")
def client(tiny_checkpoint):
    with make_client(checkpoint=str(tiny_checkpoint), warmup=False) as c:
        wait_ready(c)
        yield c


@pytest.mark.parametrize("suffix", sorted({s for s, (_, pil) in READ_FORMATS.items() if pil != "JPEG"} | {".jpg"}))
def test_a_raw_body_takes_every_read_format_like_a_multipart_part(client, suffix):
    media, pil = READ_FORMATS[suffix]
    data = image_bytes(PIL_WRITERS[pil], seed=3)
    raw = client.post("/encode?format=npy", content=data, headers={**AUTH, "Content-Type": media})
    part = client.post("/encode?format=npy", files={"image": (f"x{suffix}", data, media)}, headers=AUTH)
    assert raw.status_code == 200 and part.status_code == 200, (raw.text, part.text)
    assert np.array_equal(np.load(io.BytesIO(raw.content)), np.load(io.BytesIO(part.content)))


def test_v2_encoder_metadata_lists_fp32_beside_uint8(client):
    images = client.get(f"/v2/models/{ENCODER}", headers=AUTH).json()["inputs"][0]
    assert {a["datatype"] for a in images["accepted"]} == {"UINT8", "FP32"}


def test_replaying_every_malformed_input_leaves_no_5xx_in_metrics(client):
    for bad in malformed_requests(LIMITS):
        assert send(client, bad).status_code == bad.status, bad.name
    for bad in malformed_v2_requests(LIMITS):
        assert send_v2(client, bad).status_code == bad.status, bad.name
    metrics = client.get("/metrics").text
    assert 'status="400"' in metrics  # the replay was counted
    assert SERVER_ERROR_LINE.findall(metrics) == []
