"""Dynamic batcher: groups concurrent requests of one operation onto the backend.

Requests are queued with a grouping key (encode: image size and mode; decode: latent shape and
steps). A batch is the oldest request plus every queued request with the same key, up to
``max_batch_size`` items, formed once the batch is full or the oldest request has waited
``max_wait_s``. Per-item seeds travel with the items, so a merged batch computes exactly what
each request would alone. Backend work runs in the given executor (one worker thread per
backend), never on the event loop.

Backpressure: at most ``queue_size`` requests wait; beyond that ``submit`` raises QueueFull at
once. A request past its deadline gets DeadlineExceeded and is dropped from the queue. A backend
failure fails only that batch's requests. An out-of-memory error splits the batch in halves and
retries (down to single items) before giving up.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable, Hashable

import torch

from dgae.errors import BackendError, DGAEError

from .errors import DeadlineExceeded, QueueFull, ShuttingDown
from .metrics import ServiceMetrics

log = logging.getLogger(__name__)

# run(key, inputs [n, ...], seeds (n ints)) -> outputs [n, ...]; called in the worker thread.
BatchFn = Callable[[Hashable, torch.Tensor, list[int]], torch.Tensor]
OOM_MARKER = "out of memory"


def is_out_of_memory(exc: BaseException) -> bool:
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if isinstance(t, type))
    return isinstance(exc, oom_types) or (isinstance(exc, RuntimeError) and OOM_MARKER in str(exc).lower())


@dataclass
class _Job:
    key: Hashable
    inputs: torch.Tensor  # [n, ...]
    seeds: list[int]
    future: asyncio.Future
    enqueued_at: float = field(default_factory=time.monotonic)

    @property
    def n(self) -> int:
        return len(self.inputs)


class DynamicBatcher:
    def __init__(self, operation: str, run: BatchFn, executor: Executor, metrics: ServiceMetrics, *,
                 max_batch_size: int, max_wait_s: float, queue_size: int, retry_after_s: int):
        self.operation, self._run, self._executor, self._metrics = operation, run, executor, metrics
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_s
        self.queue_size, self.retry_after_s = queue_size, retry_after_s
        self._queue: deque[_Job] = deque()
        self._arrived = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.operation}")

    async def close(self, timeout_s: float) -> None:
        """Stop accepting; let queued and running batches finish (up to ``timeout_s``)."""
        self._closing = True
        self._arrived.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._task, timeout_s)
        except (TimeoutError, asyncio.CancelledError):
            log.warning("%s batcher: %d request(s) not drained in %.0fs", self.operation, len(self._queue), timeout_s)
            self._task.cancel()
        for job in self._queue:
            if not job.future.done():
                job.future.set_exception(ShuttingDown("the service is shutting down"))
        self._queue.clear()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    # --- requests ------------------------------------------------------------------------------
    async def submit(self, key: Hashable, inputs: torch.Tensor, seeds: list[int], timeout_s: float) -> torch.Tensor:
        """Queue ``inputs`` [n, ...] and wait for their outputs [n, ...]."""
        if self._closing:
            raise ShuttingDown("the service is shutting down", headers={"Retry-After": str(self.retry_after_s)})
        if len(self._queue) >= self.queue_size:
            self._metrics.rejected.labels(self.operation).inc()
            raise QueueFull(f"{self.operation} queue is full ({self.queue_size} waiting); retry later",
                            headers={"Retry-After": str(self.retry_after_s)})
        job = _Job(key, inputs, list(seeds), asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._arrived.set()
        pending = self._metrics.pending.labels(self.operation)
        pending.inc()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(f"{self.operation} did not finish within {timeout_s:g} s") from None
        finally:
            job.future.cancel()  # no-op when done; otherwise the loop skips it
            pending.dec()

    # --- batching loop -----------------------------------------------------------------------------
    def _items(self, key: Hashable) -> int:
        return sum(j.n for j in self._queue if j.key == key and not j.future.done())

    def _take(self, key: Hashable) -> list[_Job]:
        """Remove and return the batch for ``key`` (first job always; others while they fit)."""
        batch, rest, items = [], deque(), 0
        for job in self._queue:
            if job.future.done():
                continue  # deadline passed or caller gone
            if job.key == key and (not batch or items + job.n <= self.max_batch_size):
                batch.append(job)
                items += job.n
            else:
                rest.append(job)
        self._queue = rest
        return batch

    async def _loop(self) -> None:
        while True:
            while self._queue and self._queue[0].future.done():
                self._queue.popleft()
            if not self._queue:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            first = self._queue[0]
            wait_until = first.enqueued_at + self.max_wait_s
            while not self._closing and self._items(first.key) < self.max_batch_size:
                remaining = wait_until - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take(first.key)
            if batch:
                await self._execute(first.key, batch)

    async def _execute(self, key: Hashable, batch: list[_Job]) -> None:
        inputs = torch.cat([j.inputs for j in batch])  # [sum n, ...]
        seeds = [s for j in batch for s in j.seeds]
        started = time.monotonic()
        for job in batch:
            self._metrics.queue_seconds.labels(self.operation).observe(started - job.enqueued_at)
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run_split, key, inputs, seeds)
        except Exception as exc:  # noqa: BLE001 - fail this batch only, keep serving
            if not isinstance(exc, DGAEError):
                log.error("%s batch of %d failed", self.operation, len(inputs), exc_info=exc)
                exc = BackendError(f"{self.operation} failed in the backend: {type(exc).__name__}: {exc}")
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self._metrics.compute_seconds.labels(self.operation).observe(time.monotonic() - started)
        offset = 0
        for job in batch:
            if not job.future.done():
                job.future.set_result(outputs[offset:offset + job.n])
            offset += job.n

    # --- worker thread --------------------------------------------------------------------------------
    def _run_split(self, key: Hashable, inputs: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """Run in chunks of max_batch_size; on out-of-memory halve a chunk and retry."""
        outs = [self._run_oom_safe(key, inputs[i:i + self.max_batch_size], seeds[i:i + self.max_batch_size])
                for i in range(0, len(inputs), self.max_batch_size)]
        return torch.cat(outs)

    def _run_oom_safe(self, key: Hashable, inputs: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        try:
            out = self._run(key, inputs, seeds)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if len(inputs) == 1:
                raise BackendError(f"{self.operation}: out of memory even for a single item") from exc
        else:
            self._metrics.batch_size.labels(self.operation).observe(len(inputs))
            return out
        self._metrics.oom_splits.labels(self.operation).inc()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(inputs) // 2
        log.warning("%s: out of memory on a batch of %d; retrying as %d + %d",
                    self.operation, len(inputs), half, len(inputs) - half)
        return torch.cat([self._run_oom_safe(key, inputs[:half], seeds[:half]),
                          self._run_oom_safe(key, inputs[half:], seeds[half:])])
