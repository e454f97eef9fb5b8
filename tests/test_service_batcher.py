"""DynamicBatcher unit tests with fake batch functions (no model): grouping, seeds, backpressure,
deadlines, failure isolation, OOM split-retry and draining."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from dgae.errors import BackendError
from service.batcher import DynamicBatcher, is_out_of_memory
from service.errors import DeadlineExceeded, QueueFull, ShuttingDown
from service.metrics import ServiceMetrics

LONG_S = 30.0  # a deadline no test reaches


class Recorder:
    """Batch function: output = input * 10 + seed (per row), recording every call."""

    def __init__(self, gate: threading.Event | None = None, fail_key=None, oom_above: int | None = None):
        self.calls: list[tuple] = []
        self.started = threading.Event()
        self.gate, self.fail_key, self.oom_above = gate, fail_key, oom_above

    def __call__(self, key, inputs, seeds):
        self.started.set()
        if self.gate is not None:
            self.gate.wait(LONG_S)
        if key == self.fail_key:
            raise RuntimeError("kaboom")
        if self.oom_above is not None and len(inputs) > self.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
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

    (bad, good), _ = run(go, rec)
    assert isinstance(bad, BackendError) and "kaboom" in str(bad)
    assert good.item() == 22.0


def test_out_of_memory_splits_the_batch_and_retries():
    rec = Recorder(oom_above=1)

    async def go(b):
        return await asyncio.gather(*[b.submit("K", rows([i]), [i], LONG_S) for i in range(4)])

    outs, metrics = run(go, rec)
    assert [o.item() for o in outs] == [0.0, 11.0, 22.0, 33.0]
    assert all(n == 1 for _, n, _ in rec.calls)
    assert 'dgae_oom_splits_total{operation="decode"} 3.0' in metrics.render().decode()


def test_out_of_memory_on_a_single_item_is_a_backend_error():
    rec = Recorder(oom_above=0)
    with pytest.raises(BackendError, match="out of memory"):
        run(lambda b: b.submit("K", rows([1]), [1], LONG_S), rec)


def test_is_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


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
