"""Tests against real `dgae serve` processes (uvicorn on loopback, tiny checkpoint): round trip,
batching under 32 concurrent clients with batch invariance, malformed requests, queue-full 503,
a schemathesis run over /openapi.json, a disconnected client's queued decode dropped, 16 x 4096^2
PNGs refused 413 without the server's memory growing, and SIGTERM draining."""
from __future__ import annotations

import asyncio
import io
import re
import signal
import socket
import struct
import time
from pathlib import Path
from urllib.parse import urlsplit
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from service_cases import AUTH, F, Limits, flat_png, latents, malformed_requests, png, send, serve, st_bytes

pytestmark = pytest.mark.server

LIMITS = Limits()
CONCURRENCY = 32
MAX_LEVEL_DIFF = 1  # 8-bit levels batched vs alone (float reassociation only)
SLOW_STEPS = 64  # keeps the single-slot slow server busy
HTTP_TIMEOUT_S = 120
SCHEMATHESIS_EXAMPLES = 15
POLL_S = 0.05
BLOCKER_SIDE = 16  # latent side of the decode that keeps slow_server busy (seconds at SLOW_STEPS)
HUGE_SIDE, HUGE_COUNT = 4096, 16  # the default max_pixels side and max_items
MAX_RSS_GROWTH_KB = 200 * 1024
RESET_PEAK_RSS = "5"  # /proc/<pid>/clear_refs: reset VmHWM to the current RSS


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
    documented = set(httpx.get(server.url + "/openapi.json").json()["paths"])
    assert {op.path for op in operations} == documented  # the whole document: routes added later run too
    assert documented >= {"/encode", "/decode", "/healthz", "/readyz", "/metrics", "/v1/model", "/v2",
                          "/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{model_version}/infer"}
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


def metric(url: str, pattern: str) -> float:
    m = re.search(rf"^{pattern} (\S+)$", httpx.get(url + "/metrics").text, re.M)
    return float(m.group(1)) if m else 0.0


STARTED_DECODE_BATCHES = r'dgae_queue_duration_seconds_count\{operation="decode"\}'  # observed as a batch starts


def start_blocking_decode(pool: ThreadPoolExecutor, url: str):
    """Post a decode that computes for seconds on slow_server; return once it is computing (out of the queue)."""
    started = metric(url, STARTED_DECODE_BATCHES)
    blocker = pool.submit(httpx.post, f"{url}/decode?steps={SLOW_STEPS}&seed=1",
                          content=st_bytes(latents(1, BLOCKER_SIDE, BLOCKER_SIDE)), timeout=HTTP_TIMEOUT_S)
    wait_until(lambda: metric(url, STARTED_DECODE_BATCHES) > started, blocker, "the blocking decode never started")
    return blocker


def wait_until(condition, blocker, what: str) -> None:
    """Poll ``condition`` (bounded) while the blocking request is still running."""
    deadline = time.monotonic() + HTTP_TIMEOUT_S
    while not condition():
        assert not blocker.done(), f"{what}: the blocking request finished first ({blocker.result().text[:200]})"
        assert time.monotonic() < deadline, what
        time.sleep(POLL_S)


def test_a_disconnected_clients_queued_decode_is_dropped_not_computed(slow_server):
    url = slow_server.url
    batches = r'dgae_batch_size_count\{operation="decode"\}'
    dropped = r'dgae_dropped_total\{operation="decode",reason="client_disconnected"\}'
    before = metric(url, batches)
    body = st_bytes(latents(1, 4, 4))
    with ThreadPoolExecutor(1) as pool:
        blocker = start_blocking_decode(pool, url)
        parts = urlsplit(url)
        client = socket.create_connection((parts.hostname, parts.port), timeout=HTTP_TIMEOUT_S)
        client.sendall(f"POST /decode?steps={SLOW_STEPS}&seed=2 HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                       f"Content-Type: application/x-safetensors\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                       + body)
        wait_until(lambda: pending_decodes(url) >= 2, blocker, "the second decode was never queued")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset: the client is gone
        client.close()
        wait_until(lambda: metric(url, dropped) >= 1, blocker, "the disconnected decode was not dropped")
        assert blocker.result().status_code == 200
    assert pending_decodes(url) == 0
    assert metric(url, batches) == before + 1  # the blocker only: the dropped decode never ran
    assert metric(url, dropped) == 1
    assert metric(url, r'dgae_requests_total\{route="/decode",status="499"\}') == 1
    assert "dropped a queued request" in slow_server.log_text()


def _status_kb(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB$", text, re.M).group(1))


def test_sixteen_4096_pngs_are_refused_413_before_decoding_without_memory_growth(slow_server):
    """slow_server has the default limits: each image is within max_pixels, all 16 exceed max_request_pixels."""
    files = [("image", (f"{i}.png", flat_png(HUGE_SIDE, (i * 15, 255 - i * 15, 128)), "image/png"))
             for i in range(HUGE_COUNT)]
    pid = slow_server.proc.pid
    proc_status = Path(f"/proc/{pid}/clear_refs")
    measure = proc_status.exists()
    if measure:
        proc_status.write_text(RESET_PEAK_RSS)
        rss_before = _status_kb(pid, "VmRSS")
    r = httpx.post(slow_server.url + "/encode", files=files, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "too_large" and "pixels per request" in r.json()["error"]["message"]
    if measure:
        growth_kb = _status_kb(pid, "VmHWM") - rss_before
        print(f"peak RSS growth for {HUGE_COUNT} x {HUGE_SIDE}^2 PNGs: {growth_kb / 1024:.1f} MB")
        assert growth_kb <= MAX_RSS_GROWTH_KB


def test_sigterm_drains_in_flight_requests_and_exits_0(slow_server):
    """Runs last on slow_server: it stops the process."""
    body = st_bytes(latents(1, 4, 4))
    with ThreadPoolExecutor(2) as pool:
        # one at a time: two arriving together can both find the queue's one slot (queue_size 1) taken
        blocker = start_blocking_decode(pool, slow_server.url)
        queued = pool.submit(httpx.post, f"{slow_server.url}/decode?steps={SLOW_STEPS}&seed=2", content=body,
                             timeout=HTTP_TIMEOUT_S)
        wait_until(lambda: pending_decodes(slow_server.url) >= 2, blocker, "the second decode was never queued")
        slow_server.proc.send_signal(signal.SIGTERM)
        responses = [f.result() for f in (blocker, queued)]
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    sizes = [Image.open(io.BytesIO(r.content)).size for r in responses]
    assert sizes == [(BLOCKER_SIDE * F, BLOCKER_SIDE * F), (4 * F, 4 * F)]
    assert slow_server.proc.wait(timeout=HTTP_TIMEOUT_S) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(slow_server.url + "/healthz", timeout=HTTP_TIMEOUT_S)
    assert "SIGTERM" in slow_server.log_text()
