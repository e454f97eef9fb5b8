"""Runs jobs on the engine's worker threads, one job at a time per operation, and drains at shut-down.

Where jobs compute: a job does not go through the dynamic batcher (it has its own progress hook and
no deadline); :meth:`Engine.run_job` hands the whole run to the operation's one worker thread,
the same thread the batcher's batches run on. So a job and a synchronous batch never compute at
once, a job waits at most for the batch computing now, and the batches that arrive during a job
wait for it (their deadline check counts only their own work). One runner task per operation
takes jobs first in, first out, so at most one job per operation computes or holds its pixels.

A job holds its admission pixels (padded, tiled) while it runs, like a synchronous request; when
the budget is full it waits for room (it never fails for it). Progress is counted per network pass
by the backend's pass hook, which also stops a cancelled job between two passes (``DELETE``).

Shut-down: queued jobs end ``failed`` (``shutting_down``) at once; the running one may finish
within ``shutdown_timeout_s`` and is otherwise stopped between passes and ends ``failed`` with the
reason. Every end is written to disk before the process exits.
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from dgae.errors import DGAEError
from export.cache import cache_root

from ..core.engine import OPERATIONS, Engine
from ..core.errors import BudgetFull, ShuttingDown, is_out_of_memory, status_of
from ..native.routes import Prepared
from .store import CANCELLED, QUEUED, RUNNING, Job, JobStore

log = logging.getLogger(__name__)

JOBS_SUBDIR = "jobs"
CANCEL_GRACE_S = 5.0  # at shut-down, how long a stopped job gets to reach its next pass boundary


class JobCancelled(Exception):
    """Raised by the pass hook: the job was cancelled (or the service is stopping)."""


class JobRunner:
    def __init__(self, engine: Engine):
        s = engine.settings
        self.engine = engine
        root = Path(s.jobs_dir) if s.jobs_dir else cache_root() / JOBS_SUBDIR
        self.store = JobStore(root, s.jobs_ttl_s, s.jobs_max_per_key, s.jobs_max_result_bytes)
        self.queues: dict[str, asyncio.Queue[str]] = {}
        self.prepared: dict[str, Prepared] = {}  # queued jobs' checked inputs (memory only)
        self.running: dict[str, Job] = {}
        self.runs: dict[str, asyncio.Task] = {}  # the running job's task per operation
        self.tasks: dict[str, asyncio.Task] = {}
        self.closing = False

    # --- lifecycle (engine.on_start / engine.on_stop) -----------------------------------------------
    def start(self) -> None:
        self.store.load()
        for op in OPERATIONS:
            self.queues[op] = asyncio.Queue()
            self.tasks[op] = asyncio.get_running_loop().create_task(self._loop(op), name=f"dgae-jobs-{op}")
        self.update_metrics()

    async def stop(self, timeout_s: float) -> None:
        """Fail the queued jobs, let the running ones finish within ``timeout_s``, then stop them."""
        self.closing = True
        for job in list(self.store.jobs.values()):
            if job.state == QUEUED:
                self.prepared.pop(job.id, None)
                self.store.fail(job, ShuttingDown.status, ShuttingDown.code,
                                "the service shut down before the job started; submit it again")
        runs = list(self.runs.values())
        if runs:
            log.info("jobs: draining %d running job(s) for up to %.0f s", len(runs), timeout_s)
            _, busy = await asyncio.wait(runs, timeout=max(0.0, timeout_s - CANCEL_GRACE_S))
            if busy:
                for job in self.running.values():
                    job.cancel_requested = True
                await asyncio.wait(busy, timeout=CANCEL_GRACE_S)
            for job in list(self.running.values()):  # still inside a pass: record the end anyway
                self.store.fail(job, ShuttingDown.status, ShuttingDown.code, self._stopped_message())
        for task in self.tasks.values():
            task.cancel()
        self.update_metrics()

    def _stopped_message(self) -> str:
        return (f"the service shut down while the job was running and it did not finish within "
                f"shutdown_timeout_s={self.engine.settings.shutdown_timeout_s} s; submit it again")

    def seconds_ahead(self, op: str) -> float:
        """The running job's estimated time left on ``op``'s worker (a synchronous request waits that long)."""
        job = self.running.get(op)
        return (job.seconds_left(time.time()) or 0.0) if job is not None else 0.0

    # --- jobs ---------------------------------------------------------------------------------
    def submit(self, prepared: Prepared, owner: str) -> Job:
        eng = self.engine
        if self.closing:
            raise ShuttingDown("the service is shutting down; submit the job again later")
        est = eng.cost.estimate(prepared.operation, prepared.req)
        job = self.store.create(prepared.operation, owner, eng.passes(prepared.operation, prepared.req),
                                est.seconds, prepared.pixels)
        self.prepared[job.id] = prepared
        self.queues[prepared.operation].put_nowait(job.id)
        self.update_metrics()
        log.info("job %s: %s queued (%d passes, estimate %s)", job.id, job.operation, job.total, est.describe())
        return job

    def cancel(self, job: Job) -> None:
        """A queued job ends at once; a running one at its next pass boundary."""
        if job.state == RUNNING:
            job.cancel_requested = True
            return
        self.prepared.pop(job.id, None)
        self.store.fail(job, *self._cancelled_error(), state=CANCELLED)
        self.update_metrics()

    @staticmethod
    def _cancelled_error() -> tuple[int, str, str]:
        return 410, "cancelled", "the job was cancelled (DELETE)"

    async def _loop(self, op: str) -> None:
        queue = self.queues[op]
        while True:
            job_id = await queue.get()
            job, prepared = self.store.jobs.get(job_id), self.prepared.pop(job_id, None)
            if job is None or job.finished or prepared is None:
                continue
            self.running[op] = job
            run = asyncio.get_running_loop().create_task(self._run(job, prepared), name=f"dgae-job-{job.id}")
            self.runs[op] = run
            await asyncio.shield(run)  # cancelling the loop (shut-down) leaves the run to drain

    async def _reserve(self, job: Job):
        """The job's admission pixels, waiting while the budget is full; None once the service stops."""
        admission = self.engine.admission
        while not self.closing:
            try:
                return admission.reserve(job.operation, job.pixels)
            except BudgetFull:
                await asyncio.sleep(self.engine.settings.retry_after_s)

    async def _run(self, job: Job, prepared: Prepared) -> None:
        eng, op = self.engine, job.operation
        reservation = await self._reserve(job)
        if reservation is None or job.finished:  # stopped (and failed by stop()) while waiting for room
            self.running.pop(op, None)
            self.runs.pop(op, None)
            if reservation is not None:
                reservation.release()
            return
        try:
            self.store.start(job)
            eng.metrics.job_queue_seconds.labels(op).observe(job.started_at - job.created_at)
            self.update_metrics()
            log.info("job %s: running", job.id)
            passes = eng.metrics.job_passes.labels(op)

            def on_pass() -> None:  # worker thread
                job.done += 1
                passes.inc()
                if job.cancel_requested:
                    raise JobCancelled()

            outputs = await eng.run_job(op, prepared.req, on_pass)
            data, media, headers = await prepared.respond(outputs, {})
            await asyncio.to_thread(self.store.finish, job, data, media, headers)
            log.info("job %s: %s (%d bytes)", job.id, job.state, len(data))
        except JobCancelled:
            if self.closing:
                self.store.fail(job, ShuttingDown.status, ShuttingDown.code, self._stopped_message())
            else:
                self.store.fail(job, *self._cancelled_error(), state=CANCELLED)
            log.info("job %s: %s after %d of %d passes", job.id, job.state, job.done, job.total)
        except asyncio.CancelledError:
            if not job.finished:
                self.store.fail(job, ShuttingDown.status, ShuttingDown.code, self._stopped_message())
            raise
        except Exception as exc:  # noqa: BLE001 - the job fails with the reason, the service serves on
            self.store.fail(job, *self._error_of(exc))
            log.warning("job %s failed: %s", job.id, job.error["message"], exc_info=not isinstance(exc, DGAEError))
        finally:
            reservation.release()
            self.running.pop(op, None)
            self.runs.pop(op, None)
            self.update_metrics()

    @staticmethod
    def _error_of(exc: Exception) -> tuple[int, str, str]:
        if is_out_of_memory(exc):
            return 503, "out_of_memory", f"the server ran out of memory running the job ({type(exc).__name__})"
        if isinstance(exc, DGAEError):
            return status_of(exc), exc.code, str(exc)
        return 500, "internal_error", f"{type(exc).__name__}: {exc}"

    def update_metrics(self) -> None:
        m = self.engine.metrics
        for state, count in self.store.counts().items():
            m.jobs.labels(state).set(count)
        m.job_result_bytes.set(self.store.bytes_used())
