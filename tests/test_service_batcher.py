"""DynamicBatcher unit tests with fake batch functions (no model): grouping, max-wait, seeds,
backpressure, deadlines, dropped callers, failure isolation, OOM (CUDA and CPU) split-retry, draining
and forced close."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from dgae.errors import BackendError, InputError
from service.core.batcher import DynamicBatcher, is_out_of_memory
from service.core.disconnect import CLIENT_DISCONNECTED
from service.core.errors import DeadlineExceeded, OutOfMemory, QueueFull, ShuttingDown, UnprocessableInput
from service.core.metrics import ServiceMetrics

LONG_S = 30.0  # a deadline no test reaches
SHORT_S = 0.05  # a deadline or drain timeout that does pass
ANSWER_WAIT_S = 5.0  # how long a test waits for a caller that must already have been answered
RETRY_AFTER = {"Retry-After": "3"}
CPU_ALLOCATOR_MESSAGE = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                         "you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)")
CPU_OOM_ERRORS = {
    "MemoryError": lambda: MemoryError(),
    "DefaultCPUAllocator": lambda: RuntimeError(CPU_ALLOCATOR_MESSAGE),
    "not enough memory": lambda: RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 GB"),
    "CUDA": lambda: torch.OutOfMemoryError("CUDA out of memory (simulated)"),
}


class Recorder:
    """Batch function: output = input * 10 + seed (per row), recording every call."""

    def __init__(self, gate: threading.Event | None = None, fail_key=None, oom_above: int | None = None,
                 oom_error=CPU_OOM_ERRORS["CUDA"]):
        self.calls: list[tuple] = []
        self.started = threading.Event()
        self.gate, self.fail_key, self.oom_above, self.oom_error = gate, fail_key, oom_above, oom_error

    def __call__(self, key, inputs, seeds):
        self.started.set()
        if self.gate is not None:
            self.gate.wait(LONG_S)
        if key == self.fail_key:
            raise RuntimeError("kaboom")
        if self.oom_above is not None and len(inputs) > self.oom_above:
            raise self.oom_error()
        self.calls.append((key, len(inputs), list(seeds)))
        return inputs * 10 + torch.tensor(seeds, dtype=inputs.dtype).view(-1, *[1] * (inputs.dim() - 1))


def run(coro_fn, run_fn, **kw):
    """Run ``coro_fn(batcher)`` on a fresh loop with a started batcher and one worker thread."""
    async def main():
        metrics = ServiceMetrics()
        opts = dict(max_batch_size=4, max_wait_s=0.05, queue_size=16, retry_after_s=3) | kw
        with ThreadPoolExecutor(1) as pool:
            b = DynamicBatcher("decode", run_fn, pool, metrics, **opts)
            b.start()
            try:
                return await coro_fn(b), metrics
            finally:
                if run_fn.gate is not None:
                    run_fn.gate.set()
                await b.close(LONG_S)
    return asyncio.run(main())


def rows(values, n=1):
    return torch.tensor(values, dtype=torch.float32).view(n, 1)


def test_groups_by_key_caps_batch_size_and_returns_each_request_its_rows():
    rec = Recorder()

    async def go(b):
        jobs = [b.submit("A", rows([i]), [100 + i], LONG_S) for i in range(5)]
        jobs += [b.submit("B", rows([50 + i]), [7], LONG_S) for i in range(2)]
        return await asyncio.gather(*jobs)

    outs, metrics = run(go, rec)
    for i in range(5):
        assert outs[i].item() == i * 10 + 100 + i
    assert [o.item() for o in outs[5:]] == [507, 517]
    sizes = sorted((k, n) for k, n, _ in rec.calls)
    assert sizes == [("A", 1), ("A", 4), ("B", 2)]
    text = metrics.render().decode()
    assert 'dgae_batch_size_bucket{le="4.0",operation="decode"} 3.0' in text
    assert 'dgae_batch_size_count{operation="decode"} 3.0' in text


def test_per_item_seeds_are_concatenated_in_request_order():
    rec = Recorder()

    async def go(b):
        return await asyncio.gather(b.submit("K", rows([1, 2], 2), [11, 12], LONG_S),
                                    b.submit("K", rows([3]), [99], LONG_S))

    (first, second), _ = run(go, rec)
    assert rec.calls == [("K", 3, [11, 12, 99])]
    assert first.flatten().tolist() == [21.0, 32.0] and second.flatten().tolist() == [129.0]


def test_request_larger_than_max_batch_is_chunked():
    rec = Recorder()
    out, _ = run(lambda b: b.submit("K", rows(list(range(10)), 10), list(range(10)), LONG_S), rec)
    assert [n for _, n, _ in rec.calls] == [4, 4, 2]
    assert out.flatten().tolist() == [i * 11.0 for i in range(10)]


def test_queue_full_rejects_at_once_with_retry_after():
    gate = threading.Event()
    rec = Recorder(gate=gate)

    async def go(b):
        running = asyncio.ensure_future(b.submit("K", rows([0]), [0], LONG_S))
        await asyncio.get_running_loop().run_in_executor(None, rec.started.wait, LONG_S)
        waiting = [asyncio.ensure_future(b.submit("K", rows([i]), [i], LONG_S)) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as err:
            await b.submit("K", rows([3]), [3], LONG_S)
        gate.set()
        done = await asyncio.gather(running, *waiting)
        return err.value, done

    (err, done), metrics = run(go, rec, queue_size=2)
    assert err.status == 503 and err.headers == {"Retry-After": "3"}
    assert [d.item() for d in done] == [0.0, 11.0, 22.0]
    assert 'dgae_queue_rejections_total{operation="decode"} 1.0' in metrics.render().decode()


def test_deadline_raises_504_and_the_expired_request_is_never_computed():
    gate = threading.Event()
    rec = Recorder(gate=gate)

    async def go(b):
        blocker = asyncio.ensure_future(b.submit("K", rows([0]), [0], LONG_S))
        await asyncio.get_running_loop().run_in_executor(None, rec.started.wait, LONG_S)
        with pytest.raises(DeadlineExceeded) as err:
            await b.submit("L", rows([5]), [5], 0.05)
        gate.set()
        await blocker
        await asyncio.sleep(0.1)  # let the loop look at the expired job
        return err.value

    err, _ = run(go, rec)
    assert err.status == 504
    assert [k for k, _, _ in rec.calls] == ["K"]


def test_backend_failure_fails_only_that_batch():
    rec = Recorder(fail_key="bad")

    async def go(b):
        return await asyncio.gather(b.submit("bad", rows([1]), [1], LONG_S), b.submit("good", rows([2]), [2], LONG_S),
                                    return_exceptions=True)

    (bad, good), metrics = run(go, rec)
    assert isinstance(bad, UnprocessableInput) and bad.status == 422 and "RuntimeError: kaboom" in str(bad)
    assert good.item() == 22.0
    assert metrics.worker_errors.labels("decode")._value.get() == 1


POISON_ROW = -1.0


def poison_rows(key, inputs, seeds):
    """Fails any batch holding a POISON_ROW row (a request that trips the backend)."""
    if (inputs == POISON_ROW).any():
        raise ValueError("poisoned row")
    return inputs * 10


poison_rows.gate = None


def test_a_request_that_trips_the_backend_fails_alone_and_its_batch_neighbours_are_answered():
    async def go(b):
        return await asyncio.gather(b.submit("K", rows([1]), [0], LONG_S),
                                    b.submit("K", rows([POISON_ROW]), [0], LONG_S),
                                    b.submit("K", rows([3, 4], 2), [0, 0], LONG_S), return_exceptions=True)

    (first, bad, last), metrics = run(go, poison_rows, max_wait_s=LONG_S / 100)
    assert isinstance(bad, UnprocessableInput) and "ValueError: poisoned row" in str(bad)
    assert first.tolist() == [[10.0]] and last.tolist() == [[30.0], [40.0]]
    assert metrics.worker_errors.labels("decode")._value.get() == 1
    assert metrics.batch_size.labels("decode")._sum.get() == 3  # the retries alone: 1 + 2 items (the batch failed)


def test_typed_errors_from_the_worker_keep_their_status():
    def typed(key, inputs, seeds):
        raise (InputError if key == "input" else BackendError)("typed")

    typed.gate = None

    async def go(b):
        return await asyncio.gather(b.submit("input", rows([1]), [0], LONG_S),
                                    b.submit("backend", rows([1]), [0], LONG_S),
                                    return_exceptions=True)

    (inp, backend), metrics = run(go, typed)
    assert type(inp) is InputError and type(backend) is BackendError
    assert metrics.worker_errors.labels("decode")._value.get() == 0


@pytest.mark.parametrize("make_error", CPU_OOM_ERRORS.values(), ids=CPU_OOM_ERRORS.keys())
def test_out_of_memory_splits_the_batch_and_retries(make_error):
    rec = Recorder(oom_above=1, oom_error=make_error)

    async def go(b):
        return await asyncio.gather(*[b.submit("K", rows([i]), [i], LONG_S) for i in range(4)])

    outs, metrics = run(go, rec)
    assert [o.item() for o in outs] == [0.0, 11.0, 22.0, 33.0]
    assert all(n == 1 for _, n, _ in rec.calls)
    assert 'dgae_oom_splits_total{operation="decode"} 3.0' in metrics.render().decode()


@pytest.mark.parametrize("make_error", CPU_OOM_ERRORS.values(), ids=CPU_OOM_ERRORS.keys())
def test_out_of_memory_on_a_single_item_is_503_saying_so(make_error):
    rec = Recorder(oom_above=0, oom_error=make_error)
    with pytest.raises(OutOfMemory, match="ran out of memory") as err:
        run(lambda b: b.submit("K", rows([1]), [1], LONG_S), rec)
    assert err.value.status == 503 and err.value.headers == RETRY_AFTER


def test_is_out_of_memory():
    class OrtRuntimeException(Exception):  # onnxruntime's RuntimeException is not a RuntimeError
        pass

    for exc in (torch.OutOfMemoryError("x"), RuntimeError("CUDA error: out of memory"), MemoryError(),
                RuntimeError(CPU_ALLOCATOR_MESSAGE), RuntimeError("DefaultCPUAllocator: not enough memory"),
                OrtRuntimeException("[ONNXRuntimeError] : 6 : Failed to allocate memory for requested buffer"),
                OSError(12, "Cannot allocate memory")):
        assert is_out_of_memory(exc), exc
    for exc in (RuntimeError("shape mismatch"), InputError("latents: out of memory is not an input problem"),
                ValueError("bad value")):
        assert not is_out_of_memory(exc), exc


# --- max wait -----------------------------------------------------------------------------------
def test_a_partial_batch_runs_once_the_oldest_request_has_waited_max_wait():
    rec = Recorder()

    async def go(b):
        return await asyncio.gather(b.submit("K", rows([1]), [0], LONG_S), b.submit("K", rows([2]), [0], LONG_S))

    outs, _ = run(go, rec, max_batch_size=4, max_wait_s=SHORT_S)
    assert rec.calls == [("K", 2, [0, 0])] and [o.item() for o in outs] == [10.0, 20.0]


def test_a_full_batch_does_not_wait_for_max_wait():
    rec = Recorder()

    async def go(b):
        jobs = asyncio.gather(*[b.submit("K", rows([i]), [0], LONG_S) for i in range(4)])
        return await asyncio.wait_for(jobs, ANSWER_WAIT_S)  # max_wait is LONG_S: only a full batch gets here

    outs, _ = run(go, rec, max_batch_size=4, max_wait_s=LONG_S)
    assert rec.calls == [("K", 4, [0, 0, 0, 0])] and len(outs) == 4


# --- callers that go away -----------------------------------------------------------------------
async def _blocked(b, rec):
    """A request computing (held by rec.gate) so that the next ones queue."""
    running = asyncio.ensure_future(b.submit("busy", rows([0]), [0], LONG_S))
    await asyncio.get_running_loop().run_in_executor(None, rec.started.wait, LONG_S)
    return running


def test_queue_full_does_not_count_requests_whose_caller_is_gone():
    gate = threading.Event()
    rec = Recorder(gate=gate)

    async def go(b):
        running = await _blocked(b, rec)
        with pytest.raises(DeadlineExceeded):
            await b.submit("expired", rows([1]), [1], SHORT_S)  # stays in the deque, its caller gone
        accepted = asyncio.ensure_future(b.submit("K", rows([2]), [2], LONG_S))  # queue_size 1: room for it
        await asyncio.sleep(0)
        gate.set()
        return await asyncio.gather(running, accepted)

    (running, accepted), metrics = run(go, rec, queue_size=1)
    assert accepted.item() == 22.0
    assert [k for k, _, _ in rec.calls] == ["busy", "K"]  # the expired request was never computed
    assert 'dgae_dropped_total{operation="decode",reason="deadline_exceeded"} 1.0' in metrics.render().decode()


def test_a_cancelled_caller_is_dropped_before_compute_with_its_reason():
    gate = threading.Event()
    rec = Recorder(gate=gate)

    async def go(b):
        running = await _blocked(b, rec)
        gone = asyncio.ensure_future(b.submit("gone", rows([1]), [1], LONG_S))
        await asyncio.sleep(0)
        gone.cancel(CLIENT_DISCONNECTED)
        await asyncio.wait([gone])
        gate.set()
        after = await b.submit("after", rows([2]), [2], LONG_S)  # FIFO: the loop has passed "gone" by now
        return gone, await running, after

    (gone, _, after), metrics = run(go, rec)
    assert gone.cancelled() and after.item() == 22.0
    assert [k for k, _, _ in rec.calls] == ["busy", "after"]
    assert 'dgae_dropped_total{operation="decode",reason="client_disconnected"} 1.0' in metrics.render().decode()


# --- draining and forced close ------------------------------------------------------------------
def test_close_drains_queued_requests_then_refuses_new_ones():
    rec = Recorder()

    async def go(b):
        jobs = [asyncio.ensure_future(b.submit("K", rows([i]), [i], LONG_S)) for i in range(6)]
        await asyncio.sleep(0)
        await b.close(LONG_S)
        done = await asyncio.gather(*jobs)
        with pytest.raises(ShuttingDown):
            await b.submit("K", rows([9]), [9], LONG_S)
        return done

    done, _ = run(go, rec)
    assert [d.item() for d in done] == [i * 11.0 for i in range(6)]


def test_drain_timeout_fails_queued_requests_with_retry_after():
    gate = threading.Event()
    rec = Recorder(gate=gate)

    async def go(b):
        await _blocked(b, rec)
        queued = asyncio.ensure_future(b.submit("queued", rows([1]), [1], LONG_S))
        await asyncio.sleep(0)
        await b.close(SHORT_S)
        (done,), _ = await asyncio.wait([queued], timeout=ANSWER_WAIT_S)
        return done.exception()

    err, _ = run(go, rec)
    assert isinstance(err, ShuttingDown) and err.status == 503 and err.headers == RETRY_AFTER
    assert "queued" not in [k for k, _, _ in rec.calls]


def test_forced_close_answers_the_callers_of_the_running_batch():
    gate = threading.Event()
    rec = Recorder(gate=gate)

    async def go(b):
        running = await _blocked(b, rec)
        await b.close(SHORT_S)  # the batch is still computing (the gate is closed)
        done, _ = await asyncio.wait([running], timeout=ANSWER_WAIT_S)
        return running in done and running.exception()

    err, _ = run(go, rec)
    assert isinstance(err, ShuttingDown) and err.headers == RETRY_AFTER


def test_close_reraises_when_the_closing_task_is_cancelled_and_still_answers_callers():
    gate = threading.Event()
    rec = Recorder(gate=gate)

    async def go(b):
        running = await _blocked(b, rec)
        queued = asyncio.ensure_future(b.submit("queued", rows([1]), [1], LONG_S))
        closer = asyncio.ensure_future(b.close(LONG_S))
        await asyncio.sleep(0)  # the closer is now waiting for the drain
        closer.cancel()
        await asyncio.wait([closer], timeout=ANSWER_WAIT_S)
        answered, _ = await asyncio.wait([running, queued], timeout=ANSWER_WAIT_S)
        return closer, [t.exception() for t in (running, queued) if t in answered]

    (closer, errors), _ = run(go, rec)
    assert closer.cancelled()
    assert len(errors) == 2 and all(isinstance(e, ShuttingDown) for e in errors)
