"""The service under pressure, in process: CPU out-of-memory (split and retry, then 503, never 500),
a client that disconnects (its queued decode is never computed), encode and decode in their own
worker threads (neither waits behind the other), and shutdown (batchers close concurrently under
one deadline; stop never blocks the event loop)."""
from __future__ import annotations

import asyncio
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from service.core.settings import ServiceSettings
from service.core import lifecycle
from service.core.engine import DECODE, ENCODE, Engine
from service_cases import AUTH, API_KEY, C, F, latents, png, st_bytes
from test_service_app import (ConfigOnly, assert_json_error,
                              make_client, wait_ready, Wrapped)

GATE_WAIT_S = 10.0  # the longest a blocked backend call waits for its test (reached only when a test fails)
ANSWER_WAIT_S = 30.0  # bounded waits for things that must happen
POLL_S = 0.01
POLL_LIMIT = int(ANSWER_WAIT_S / POLL_S)
BLOCK, DROPPED, POISON = 777.0, 555.0, 1234.5  # latent values the test backends recognise
CPU_ALLOCATOR_MESSAGE = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                         "you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)")


def full(value: float, n: int = 1) -> torch.Tensor:
    return torch.full((n, C, 2, 2), value)


@pytest.fixture()
def torch_backend(tiny_checkpoint):
    from backends.torch_backend import TorchBackend  # noqa: PLC0415

    return TorchBackend.from_checkpoint(tiny_checkpoint)


# --- CPU out of memory ------------------------------------------------------------------------------
def test_cpu_allocation_failure_splits_the_batch_then_answers_503_never_500(torch_backend):
    def hook(op, t):
        if op == "decode" and (t == POISON).any():
            raise MemoryError()
        if op == "decode" and len(t) > 1:
            raise RuntimeError(CPU_ALLOCATOR_MESSAGE)  # what torch's CPU allocator raises

    with make_client(backend=Wrapped(torch_backend, hook), warmup=False) as c:
        wait_ready(c)
        z = latents(2, seed=1)
        two = c.post("/decode?seed=3&format=npy", content=st_bytes(z), headers=AUTH)
        assert two.status_code == 200, two.text
        alone = [c.post(f"/decode?seed={3 + i}&format=npy", content=st_bytes(z[i:i + 1]), headers=AUTH)
                 for i in range(2)]
        expected = np.concatenate([np.load(io.BytesIO(r.content)) for r in alone])
        np.testing.assert_array_equal(np.load(io.BytesIO(two.content)), expected)  # the split is invisible
        r = c.post("/decode", content=st_bytes(full(POISON)), headers=AUTH)
        err = assert_json_error(r, 503, "ran out of memory")
        assert err["code"] == "out_of_memory" and r.headers["retry-after"]
        assert c.post("/decode", content=st_bytes(latents()), headers=AUTH).status_code == 200
        text = c.get("/metrics").text
    assert 'dgae_oom_splits_total{operation="decode"} 1.0' in text
    assert 'status="500"' not in text


def test_memory_error_outside_the_batcher_is_503_too(tiny_checkpoint, monkeypatch):
    import service.core.codecs as codecs  # noqa: PLC0415

    def no_memory(*_args, **_kwargs):
        raise MemoryError()

    monkeypatch.setattr(codecs, "images_body", no_memory)
    with make_client(checkpoint=str(tiny_checkpoint)) as c:
        wait_ready(c)
        r = c.post("/decode", content=st_bytes(latents()), headers=AUTH)
        err = assert_json_error(r, 503, "ran out of memory")
        assert err["code"] == "out_of_memory" and r.headers["retry-after"]
        assert c.get("/healthz").status_code == 200


# --- client disconnect ------------------------------------------------------------------------------
async def _decode_then_disconnect_while_queued(app, state: Engine, body: bytes) -> list[dict]:
    """One raw ASGI /decode whose client disconnects once the request waits in the decode queue;
    returns the messages the app sent (none may come for a client that has gone)."""
    gone, sent = asyncio.Event(), []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/decode", "raw_path": b"/decode", "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
             "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {API_KEY}".encode()),
                         (b"content-type", b"application/x-safetensors"),
                         (b"content-length", str(len(body)).encode())]}
    exchange = asyncio.ensure_future(app(scope, receive, send))
    batcher = state.batchers[DECODE]
    for _ in range(POLL_LIMIT):
        if batcher.waiting or exchange.done():
            break
        await asyncio.sleep(POLL_S)
    assert batcher.waiting == 1, "the request never reached the decode queue"
    gone.set()
    await asyncio.wait_for(exchange, ANSWER_WAIT_S)
    return sent


def test_a_client_that_disconnects_has_its_queued_decode_dropped_before_compute(torch_backend):
    gate, busy, computed = threading.Event(), threading.Event(), []

    def hook(op, t):
        if op == "decode":
            computed.append(float(t.flatten()[0]))
            if (t == BLOCK).any():
                busy.set()
                gate.wait(GATE_WAIT_S)

    with make_client(backend=Wrapped(torch_backend, hook), warmup=False, max_batch_size=1) as c, \
            ThreadPoolExecutor(1) as pool:
        wait_ready(c)
        try:
            blocker = pool.submit(c.post, "/decode", content=st_bytes(full(BLOCK)), headers=AUTH)
            assert busy.wait(GATE_WAIT_S)
            sent = c.portal.call(_decode_then_disconnect_while_queued, c.app, c.app.state.service,
                                 st_bytes(full(DROPPED)))
        finally:
            gate.set()
        assert blocker.result().status_code == 200
        after = c.post("/decode", content=st_bytes(latents()), headers=AUTH)  # FIFO: queued after the dropped one
        assert after.status_code == 200
        text = c.get("/metrics").text
    assert sent == []
    assert BLOCK in computed and DROPPED not in computed
    assert 'dgae_dropped_total{operation="decode",reason="client_disconnected"} 1.0' in text
    assert 'dgae_requests_total{route="/decode",status="499"} 1.0' in text
    assert 'dgae_request_failures_total{reason="client_disconnected",route="/decode"} 1.0' in text
    assert 'dgae_inflight_pixels{operation="decode"} 0.0' in text


def test_ordinary_requests_are_not_taken_for_disconnects(tiny_checkpoint):
    with make_client(checkpoint=str(tiny_checkpoint)) as c:
        wait_ready(c)
        for _ in range(3):
            assert c.post("/decode", content=st_bytes(latents()), headers=AUTH).status_code == 200
        text = c.get("/metrics").text
    assert "dgae_dropped_total{" not in text and 'status="499"' not in text


# --- encode and decode in their own worker threads --------------------------------------------------
def test_a_long_decode_does_not_hold_up_an_encode(torch_backend):
    gate, busy = threading.Event(), threading.Event()

    def hook(op, t):
        if op == "decode" and (t == BLOCK).any():
            busy.set()
            gate.wait(GATE_WAIT_S)

    with make_client(backend=Wrapped(torch_backend, hook), warmup=False) as c, ThreadPoolExecutor(1) as pool:
        wait_ready(c)
        try:
            decode = pool.submit(c.post, "/decode", content=st_bytes(full(BLOCK)), headers=AUTH)
            assert busy.wait(GATE_WAIT_S)
            enc = c.post("/encode", content=png(2 * F, 2 * F), headers={**AUTH, "Content-Type": "image/png"})
            decode_still_running = not decode.done()
        finally:
            gate.set()
        assert enc.status_code == 200 and decode.result().status_code == 200
    assert decode_still_running, "the encode waited for the decode to finish"


# --- shutdown -----------------------------------------------------------------------------------------
class _Closer:
    """Stands in for a batcher: close() notes its timeout and whether the other closer ran meanwhile."""

    def __init__(self, entered: list, both_in: asyncio.Event, expected: int):
        self.entered, self.both_in, self.expected = entered, both_in, expected
        self.timeout_s: float | None = None
        self.overlapped = False

    async def close(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.entered.append(self)
        if len(self.entered) == self.expected:
            self.both_in.set()
        try:
            await asyncio.wait_for(self.both_in.wait(), GATE_WAIT_S)
            self.overlapped = True
        except TimeoutError:
            self.overlapped = False


def test_batchers_close_concurrently_under_one_deadline():
    shutdown_s = 7
    state = Engine(ServiceSettings(shutdown_timeout_s=shutdown_s), backend=ConfigOnly())

    async def go():
        entered, both_in = [], asyncio.Event()
        state.batchers = {op: _Closer(entered, both_in, 2) for op in (ENCODE, DECODE)}
        await lifecycle.stop(state)
        return list(state.batchers.values())

    closers = asyncio.run(go())
    assert all(c.overlapped for c in closers), "the second batcher only started closing after the first"
    assert all(0 < c.timeout_s <= shutdown_s for c in closers)


def test_stop_does_not_block_the_event_loop_while_a_worker_is_busy(torch_backend):
    gate, busy, released = threading.Event(), threading.Event(), []

    def hook(op, _t):
        if op == "encode":  # the warm-up: still loading when the shutdown comes
            busy.set()
            released.append(gate.wait(GATE_WAIT_S))

    state = Engine(ServiceSettings(shutdown_timeout_s=int(ANSWER_WAIT_S)), backend=Wrapped(torch_backend, hook))

    async def go():
        lifecycle.start(state)
        await asyncio.get_running_loop().run_in_executor(None, busy.wait, GATE_WAIT_S)
        stopping = asyncio.ensure_future(lifecycle.stop(state))
        await asyncio.sleep(0)  # stop() runs up to its first wait
        gate.set()  # only runs while the event loop is free
        await asyncio.wait_for(stopping, ANSWER_WAIT_S)

    asyncio.run(go())
    assert released == [True], "stop() blocked the event loop until the worker gave up waiting"
