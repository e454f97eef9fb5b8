"""Dynamic batcher: groups concurrent requests of one operation onto the backend.

Requests are queued with a grouping key (encode: image size and mode; decode: latent shape and
steps). A batch is the oldest request plus every queued request with the same key, up to
``max_batch_size`` items, formed once the batch is full or the oldest request has waited
``max_wait_s``. Per-item seeds travel with the items, so a merged batch computes exactly what
each request would alone. Backend work (including concatenating the batch) runs in the given
executor (one worker thread per operation, so encode and decode never wait behind each other),
never on the event loop.

Backpressure: at most ``queue_size`` live requests wait (requests whose caller has gone do not
count); beyond that ``submit`` raises QueueFull at once. A request past its deadline gets
DeadlineExceeded; a request whose caller is cancelled (client disconnected) is dropped; either
way a job not yet computing is never computed, and ``dgae_dropped_total`` counts it.

Worker exceptions (docs/faults.md, "worker exception"): a typed project error keeps its status. Any
other exception in a batch of several requests re-runs each request alone, so a request that trips
the backend cannot fail its neighbours; the request that fails alone gets 422
``unprocessable_input`` (logged with its traceback, counted in ``dgae_worker_errors_total``), and
the worker keeps serving. An out-of-memory error (CUDA or CPU) splits the batch in halves and
retries down to single items; a single item that still does not fit is a 503 ``out_of_memory``.

Closing drains: queued and running batches may finish within the timeout; after it every caller
still waiting, queued or in the running batch, gets ShuttingDown (503, ``Retry-After``).
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

from dgae.errors import DGAEError

from .disconnect import closing_task_cancelled
from .errors import (DeadlineExceeded, QueueFull, ShuttingDown, UnprocessableInput, is_out_of_memory, out_of_memory,
                     retry_after)
from .metrics import ServiceMetrics

__all__ = ["BatchFn", "DynamicBatcher", "is_out_of_memory"]

log = logging.getLogger(__name__)

# run(key, inputs [n, ...], seeds (n ints)) -> outputs [n, ...]; called in the worker thread.
BatchFn = Callable[[Hashable, torch.Tensor, list[int]], torch.Tensor]
DROP_DEADLINE = "deadline_exceeded"
DROP_CANCELLED = "cancelled"  # a caller cancelled without saying why
MAX_CAUSE_CHARS = 200  # of a worker exception's message quoted to the caller


def _cancel_reason(exc: asyncio.CancelledError) -> str:
    """The message a caller was cancelled with (``client_disconnected``), else ``cancelled``."""
    return exc.args[0] if exc.args and isinstance(exc.args[0], str) and exc.args[0] else DROP_CANCELLED


@dataclass
class _Job:
    key: Hashable
    inputs: torch.Tensor  # [n, ...]
    seeds: list[int]
    future: asyncio.Future
    enqueued_at: float = field(default_factory=time.monotonic)
    started: bool = False  # taken into a batch: it will be (or was) computed

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
        self._running: list[_Job] = []  # the batch in the worker thread now
        self._arrived = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.operation}")

    async def close(self, timeout_s: float) -> None:
        """Stop accepting; let queued and running batches finish (up to ``timeout_s``); then answer
        every caller still waiting with ShuttingDown. If the closing task itself is cancelled, the
        callers are answered and the cancellation propagates."""
        self._closing = True
        self._arrived.set()
        try:
            if self._task is not None:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            log.warning("%s batcher: not drained in %gs; %d running and %d queued request(s) get shutting_down",
                        self.operation, timeout_s, len(self._running), self.waiting)
        except asyncio.CancelledError:
            if closing_task_cancelled():
                self._abort()
                raise
            log.warning("%s batcher: its loop was cancelled while draining", self.operation)
        self._abort()

    def _abort(self) -> None:
        """Stop the loop and fail every caller still waiting (the running batch's too)."""
        if self._task is not None:
            self._task.cancel()
        for job in (*self._running, *self._queue):
            if not job.future.done():
                job.future.set_exception(self._shutting_down())
        self._queue.clear()

    def _shutting_down(self) -> ShuttingDown:
        return ShuttingDown("the service is shutting down", headers=retry_after(self.retry_after_s))

    @property
    def waiting(self) -> int:
        """Queued requests whose callers still wait (not those past their deadline or gone)."""
        return sum(1 for job in self._queue if not job.future.done())

    # --- requests ------------------------------------------------------------------------------
    async def submit(self, key: Hashable, inputs: torch.Tensor, seeds: list[int], timeout_s: float) -> torch.Tensor:
        """Queue ``inputs`` [n, ...] and wait for their outputs [n, ...]."""
        if self._closing:
            raise self._shutting_down()
        if self.waiting >= self.queue_size:
            self._metrics.rejected.labels(self.operation).inc()
            raise QueueFull(f"{self.operation} queue is full ({self.queue_size} waiting); retry later",
                            headers=retry_after(self.retry_after_s))
        job = _Job(key, inputs, list(seeds), asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._arrived.set()
        pending = self._metrics.pending.labels(self.operation)
        pending.inc()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout_s)
        except TimeoutError:
            self._dropped(job, DROP_DEADLINE)
            raise DeadlineExceeded(f"{self.operation} did not finish within {timeout_s:g} s") from None
        except asyncio.CancelledError as exc:
            self._dropped(job, _cancel_reason(exc))
            raise
        finally:
            job.future.cancel()  # no-op when done; otherwise the loop skips it
            pending.dec()

    def _dropped(self, job: _Job, reason: str) -> None:
        if job.started:
            return  # already computing: its result is discarded, not its work
        self._metrics.dropped.labels(self.operation, reason).inc()
        log.info("%s: dropped a queued request of %d item(s) before compute (%s)", self.operation, job.n, reason)

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
                job.started = True
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
        started = time.monotonic()
        for job in batch:
            self._metrics.queue_seconds.labels(self.operation).observe(started - job.enqueued_at)
        try:
            outputs = await self._compute_jobs(key, batch)
        except Exception as exc:  # noqa: BLE001 - fail this batch only, keep serving
            if len(batch) > 1 and not isinstance(exc, DGAEError) and not is_out_of_memory(exc):
                log.warning("%s: a batch of %d requests failed (%s); running each request alone",
                            self.operation, len(batch), type(exc).__name__)
                for job in batch:
                    await self._execute_alone(key, job)
                return
            self._fail(batch, exc)
            return
        self._metrics.compute_seconds.labels(self.operation).observe(time.monotonic() - started)
        self._deliver(batch, outputs)

    async def _execute_alone(self, key: Hashable, job: _Job) -> None:
        if job.future.done():
            return  # its caller has gone meanwhile
        try:
            outputs = await self._compute_jobs(key, [job])
        except Exception as exc:  # noqa: BLE001
            self._fail([job], exc)
            return
        self._deliver([job], outputs)

    async def _compute_jobs(self, key: Hashable, batch: list[_Job]) -> torch.Tensor:
        self._running = batch  # kept when this task is cancelled: close() answers these callers
        seeds = [s for j in batch for s in j.seeds]
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._compute, key, [j.inputs for j in batch], seeds)
        except Exception:
            self._running = []
            raise
        self._running = []
        return outputs

    def _deliver(self, batch: list[_Job], outputs: torch.Tensor) -> None:
        offset = 0
        for job in batch:
            if not job.future.done():
                job.future.set_result(outputs[offset:offset + job.n])
            offset += job.n

    def _fail(self, batch: list[_Job], exc: Exception) -> None:
        error = self._as_service_error(exc, len(batch))
        for job in batch:
            if not job.future.done():
                job.future.set_exception(error)

    def _as_service_error(self, exc: Exception, requests: int) -> DGAEError:
        if isinstance(exc, DGAEError):
            return exc
        if is_out_of_memory(exc):  # e.g. concatenating the batch
            log.error("%s: out of memory on a batch of %d request(s)", self.operation, requests, exc_info=exc)
            return out_of_memory(f"running {self.operation}", exc, self.retry_after_s)
        self._metrics.worker_errors.labels(self.operation).inc()
        log.error("%s: the backend raised on a request of its own (%d request(s) in the batch)", self.operation,
                  requests, exc_info=exc)
        return UnprocessableInput(f"{self.operation} could not process this request: the backend raised "
                                  f"{type(exc).__name__}: {str(exc)[:MAX_CAUSE_CHARS]}")

    # --- worker thread --------------------------------------------------------------------------------
    def _compute(self, key: Hashable, inputs: list[torch.Tensor], seeds: list[int]) -> torch.Tensor:
        """The batch's inputs [n_i, ...] joined, run in chunks of max_batch_size."""
        joined = inputs[0] if len(inputs) == 1 else torch.cat(inputs)  # [sum n_i, ...]
        return self._run_split(key, joined, seeds)

    def _run_split(self, key: Hashable, inputs: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """Run in chunks of max_batch_size; on out-of-memory halve a chunk and retry."""
        outs = [self._run_oom_safe(key, inputs[i:i + self.max_batch_size], seeds[i:i + self.max_batch_size])
                for i in range(0, len(inputs), self.max_batch_size)]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _run_oom_safe(self, key: Hashable, inputs: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        try:
            out = self._run(key, inputs, seeds)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if len(inputs) == 1:
                log.error("%s: out of memory even for a single item", self.operation, exc_info=exc)
                raise out_of_memory(f"running {self.operation} on a single item", exc, self.retry_after_s) from exc
        else:
            self._metrics.batch_size.labels(self.operation).observe(len(inputs))
            return out
        # Outside the except block: the failed attempt's frames and tensors are freed before the retry.
        self._metrics.oom_splits.labels(self.operation).inc()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(inputs) // 2
        log.warning("%s: out of memory on a batch of %d; retrying as %d + %d",
                    self.operation, len(inputs), half, len(inputs) - half)
        return torch.cat([self._run_oom_safe(key, inputs[:half], seeds[:half]),
                          self._run_oom_safe(key, inputs[half:], seeds[half:])])
