"""Tests against real `dgae serve` processes (uvicorn on loopback, tiny checkpoint): round trip,
batching under 32 concurrent clients with batch invariance, malformed requests, queue-full 503,
a schemathesis run over /openapi.json, and SIGTERM draining."""
from __future__ import annotations

import asyncio
import io
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from service_cases import AUTH, Limits, latents, malformed_requests, png, send, serve, st_bytes

pytestmark = pytest.mark.server

LIMITS = Limits()
CONCURRENCY = 32
MAX_LEVEL_DIFF = 1  # 8-bit levels batched vs alone (float reassociation only)
SLOW_STEPS = 64  # keeps the single-slot slow server busy
HTTP_TIMEOUT_S = 120
SCHEMATHESIS_EXAMPLES = 15
POLL_S = 0.05


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    flags = ["--api-keys", AUTH["Authorization"].split()[1], "--max-wait-ms", "100", "--max-batch-size", "8",
             "--torch-threads", "1",
             "--queue-size", "64", "--default-steps", "1", *LIMITS.flags()]
    with serve(tiny_checkpoint, tmp_path_factory.mktemp("server"), *flags) as s:
        yield s


@pytest.fixture(scope="module")
def slow_server(tiny_checkpoint, tmp_path_factory):
    """One request computes, one waits, the rest are refused."""
    flags = ["--max-batch-size", "1", "--queue-size", "1", "--max-wait-ms", "0", "--shutdown-timeout-s", "120",
             "--torch-threads", "1"]
    with serve(tiny_checkpoint, tmp_path_factory.mktemp("slow"), *flags) as s:
        yield s


def decode_batch_counts(url: str) -> tuple[float, float]:
    """(all decode batches, decode batches of size 1) from /metrics."""
    text = httpx.get(url + "/metrics").text
    total = re.search(r'^dgae_batch_size_count\{operation="decode"\} (\S+)$', text, re.M)
    ones = re.search(r'^dgae_batch_size_bucket\{le="1.0",operation="decode"\} (\S+)$', text, re.M)
    return (float(total.group(1)), float(ones.group(1))) if total and ones else (0.0, 0.0)


def pending_decodes(url: str) -> float:
    m = re.search(r'^dgae_pending_requests\{operation="decode"\} (\S+)$', httpx.get(url + "/metrics").text, re.M)
    return float(m.group(1)) if m else 0.0


def test_roundtrip_image_to_latents_to_image(server):
    photo = png(40, 52, seed=11)
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=HTTP_TIMEOUT_S) as c:
        enc = c.post("/encode", files={"image": ("photo.png", photo, "image/png")})  # curl -F image=@photo.png
        assert enc.status_code == 200, enc.text
        # curl --data-binary sends application/x-www-form-urlencoded; the server sniffs the payload
        dec = c.post("/decode", content=enc.content, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert dec.status_code == 200, dec.text
    assert dec.headers["content-type"] == "image/png" and dec.headers["x-dgae-model"] == "tiny"
    assert Image.open(io.BytesIO(dec.content)).size == (52, 40)


def test_concurrent_decodes_batch_and_match_single_results(server):
    payloads = [st_bytes(latents(1, 2, 2, seed=i)) for i in range(CONCURRENCY)]
    path = "/decode?format=npy&seed={}"
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=HTTP_TIMEOUT_S) as c:
        singles = [np.load(io.BytesIO(c.post(path.format(1000 + i), content=p).content))
                   for i, p in enumerate(payloads)]
    before_total, before_ones = decode_batch_counts(server.url)

    async def burst():
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=HTTP_TIMEOUT_S, limits=limits) as c:
            return await asyncio.gather(*[c.post(path.format(1000 + i), content=p) for i, p in enumerate(payloads)])

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200][:3]
    for i, r in enumerate(responses):
        assert r.headers["x-dgae-seeds"] == str(1000 + i)
        batched = np.load(io.BytesIO(r.content)).astype(int)
        assert np.abs(batched - singles[i].astype(int)).max() <= MAX_LEVEL_DIFF, f"request {i}"
    after_total, after_ones = decode_batch_counts(server.url)
    batches, singletons = after_total - before_total, after_ones - before_ones
    assert batches - singletons > 0, "no decode batch larger than 1 was formed"
    assert batches < CONCURRENCY


def test_malformed_requests_get_4xx_and_server_stays_up(server):
    cases = malformed_requests(LIMITS)
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as c:
        statuses = {bad.name: send(c, bad).status_code for bad in cases}
        assert statuses == {bad.name: bad.status for bad in cases}
        ok = c.post("/decode?seed=3", content=st_bytes(latents()), headers=AUTH)
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
    assert server.proc.poll() is None
    text = httpx.get(server.url + "/metrics").text
    assert not re.search(r'^dgae_requests_total\{route="(?!/readyz)[^"]*",status="5\d\d"\}', text, re.M)


def test_schemathesis_finds_no_server_errors_or_schema_violations(server):
    import schemathesis  # noqa: PLC0415 - dev dependency, only this test needs it
    from hypothesis import HealthCheck, given, settings  # noqa: PLC0415
    from schemathesis.checks import not_a_server_error  # noqa: PLC0415
    from schemathesis.specs.openapi.checks import (  # noqa: PLC0415
        content_type_conformance, response_headers_conformance, response_schema_conformance,
        status_code_conformance)

    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance]
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/encode", "/decode", "/healthz", "/readyz", "/metrics", "/v1/model"}
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=SCHEMATHESIS_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(headers=AUTH, checks=checks, timeout=HTTP_TIMEOUT_S)

        check()
    assert server.proc.poll() is None


def test_queue_full_is_503_with_retry_after_while_probes_stay_up(slow_server):
    body, n = st_bytes(latents(1, 4, 4)), 8
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(httpx.post, f"{slow_server.url}/decode?steps={SLOW_STEPS}&seed={i}", content=body,
                               timeout=HTTP_TIMEOUT_S) for i in range(n)]
        while not any(f.done() for f in futures):  # the refusals come back while the first decode computes
            time.sleep(POLL_S)
        probes = [httpx.get(slow_server.url + p, timeout=HTTP_TIMEOUT_S).status_code for p in ("/healthz", "/metrics")]
        responses = [f.result() for f in futures]
    assert probes == [200, 200]
    refused = [r for r in responses if r.status_code == 503]
    assert refused and all(r.headers.get("retry-after") == "1" for r in refused)
    assert {r.json()["error"]["code"] for r in refused} == {"queue_full"}
    assert all(r.status_code == 200 for r in responses if r.status_code != 503)
    assert len(refused) < n


def test_sigterm_drains_in_flight_requests_and_exits_0(slow_server):
    """Runs last on slow_server: it stops the process."""
    body = st_bytes(latents(1, 4, 4))
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(httpx.post, f"{slow_server.url}/decode?steps={SLOW_STEPS}&seed={i}", content=body,
                               timeout=HTTP_TIMEOUT_S) for i in range(2)]
        while pending_decodes(slow_server.url) < len(futures):  # one computing, one queued
            assert not any(f.done() for f in futures), [f.result().text for f in futures if f.done()]
            time.sleep(POLL_S)
        slow_server.proc.send_signal(signal.SIGTERM)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200, 200]
    assert all(Image.open(io.BytesIO(r.content)).size == (32, 32) for r in responses)
    assert slow_server.proc.wait(timeout=HTTP_TIMEOUT_S) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(slow_server.url + "/healthz", timeout=HTTP_TIMEOUT_S)
    assert "SIGTERM" in slow_server.log_text()
