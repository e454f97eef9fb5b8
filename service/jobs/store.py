"""Job records and results on disk: nothing a client was promised is lost silently.

Each job is ``<id>.json`` (its state, progress, error or result description; written atomically
on every state change) and, once done, ``<id>.result`` (exactly the bytes the synchronous route
would have answered). Results survive a restart until ``jobs_ttl_s`` after the job finished; a job
found ``queued`` or ``running`` at start-up (the process was killed) becomes ``failed`` with that
reason. Bounds: ``jobs_max_per_key`` queued or running jobs per API key (429) and
``jobs_max_result_bytes`` of results on disk (507), each named in its error.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.errors import NotFound, StorageFull, TooManyJobs

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
ACTIVE = (QUEUED, RUNNING)
ID_BYTES = 12
OWNER_HEX = 16
MIN_PACE_PASSES = 4  # before this many passes, time left comes from the cost model's estimate, not the pace
ANONYMOUS = "anonymous"
RECORD_SUFFIX, RESULT_SUFFIX, TMP_SUFFIX = ".json", ".result", ".tmp"


def owner_of(token: str | None) -> str:
    """The key a job belongs to: a digest of the API key (never the key itself), or ``anonymous``."""
    return hashlib.sha256(token.encode()).hexdigest()[:OWNER_HEX] if token else ANONYMOUS


@dataclass
class Job:
    id: str
    operation: str
    owner: str
    state: str = QUEUED
    done: int = 0  # network passes computed
    total: int = 0  # passes the whole run makes
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    estimate_s: float | None = None  # the cost model's estimate at submission
    pixels: int = 0  # what admission charges while it runs
    error: dict | None = None  # {"status", "code", "message"} when failed or cancelled
    media_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    result_bytes: int = 0
    cancel_requested: bool = False

    @property
    def finished(self) -> bool:
        return self.state not in ACTIVE

    def seconds_left(self, now: float) -> float | None:
        """Time to finish: from this run's own pace once MIN_PACE_PASSES are done, else the estimate's
        remaining share."""
        if self.finished:
            return 0.0
        if self.state == RUNNING and self.started_at and (self.done >= MIN_PACE_PASSES or self.estimate_s is None):
            return (now - self.started_at) / max(1, self.done) * (self.total - self.done)
        if self.estimate_s is None or not self.total:
            return self.estimate_s
        return self.estimate_s * (self.total - self.done) / self.total

    def view(self, ttl_s: float, now: float | None = None) -> dict:
        """The JSON a client polls: one flat object, ``progress`` in passes, times in seconds."""
        now = time.time() if now is None else now
        left = self.seconds_left(now)
        out = {"id": self.id, "operation": self.operation, "state": self.state,
               "progress": {"done": self.done, "total": self.total,
                            "fraction": round(self.done / self.total, 4) if self.total else 0.0},
               "seconds_left": None if left is None else round(left, 1),
               "estimate_s": None if self.estimate_s is None else round(self.estimate_s, 1),
               "pixels": self.pixels,  # what admission charges: padded, tiled
               "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
               "queued_s": round((self.started_at or now) - self.created_at, 3),
               "error": self.error}
        if self.finished_at is not None:
            out["expires_at"] = self.finished_at + ttl_s
        if self.state == DONE:
            out["result"] = {"media_type": self.media_type, "bytes": self.result_bytes}
        return out


class JobStore:
    def __init__(self, root: Path, ttl_s: float, max_per_key: int, max_result_bytes: int):
        self.root, self.ttl_s = root, ttl_s
        self.max_per_key, self.max_result_bytes = max_per_key, max_result_bytes
        self.jobs: dict[str, Job] = {}

    # --- disk ---------------------------------------------------------------------------------
    def _record(self, job_id: str) -> Path:
        return self.root / f"{job_id}{RECORD_SUFFIX}"

    def result_path(self, job_id: str) -> Path:
        return self.root / f"{job_id}{RESULT_SUFFIX}"

    def save(self, job: Job) -> None:
        """Write the job's record atomically (a crash leaves the old or the new one, never half)."""
        path = self._record(job.id)
        tmp = path.with_suffix(TMP_SUFFIX)
        tmp.write_text(json.dumps(asdict(job)))
        os.replace(tmp, path)

    def load(self) -> None:
        """Read every record; drop expired ones; fail the ones a previous process left unfinished."""
        self.root.mkdir(parents=True, exist_ok=True)
        for tmp in self.root.glob(f"*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
        for path in sorted(self.root.glob(f"*{RECORD_SUFFIX}")):
            try:
                job = Job(**json.loads(path.read_text()))
            except (ValueError, TypeError) as exc:
                log.warning("jobs: unreadable record %s skipped (%s)", path.name, exc)
                continue
            if job.state in ACTIVE:
                self.fail(job, 503, "interrupted", f"the service stopped while the job was {job.state} (it was not "
                                                   "shut down cleanly); submit it again", save=False)
                log.warning("jobs: %s was %s when the service stopped; marked failed", job.id, job.state)
            self.jobs[job.id] = job
            self.save(job)
        self.sweep()
        log.info("jobs: %d kept in %s (%d result bytes)", len(self.jobs), self.root, self.bytes_used())

    def sweep(self, now: float | None = None) -> None:
        """Delete finished jobs past their time-to-live, with their results."""
        now = time.time() if now is None else now
        for job in [j for j in self.jobs.values() if j.finished_at is not None and j.finished_at + self.ttl_s < now]:
            self.result_path(job.id).unlink(missing_ok=True)
            self._record(job.id).unlink(missing_ok=True)
            del self.jobs[job.id]

    # --- bounds -------------------------------------------------------------------------------
    def bytes_used(self) -> int:
        return sum(j.result_bytes for j in self.jobs.values())

    def check_room(self, owner: str) -> None:
        """429 when this key has ``max_per_key`` jobs queued or running; 507 when results fill the disk quota."""
        self.sweep()
        active = sum(1 for j in self.jobs.values() if j.owner == owner and j.state in ACTIVE)
        if active >= self.max_per_key:
            raise TooManyJobs(f"this API key has {active} jobs queued or running, the limit (jobs_max_per_key) is "
                              f"{self.max_per_key}; wait for one to finish or cancel one (DELETE /v1/jobs/{{id}})")
        used = self.bytes_used()
        if used >= self.max_result_bytes:
            raise StorageFull(f"job results fill {used} of {self.max_result_bytes} bytes on disk "
                              f"(jobs_max_result_bytes); fetch and delete finished jobs, or wait for them to expire "
                              f"({self.ttl_s:g} s after they finish)")

    # --- jobs ---------------------------------------------------------------------------------
    def create(self, operation: str, owner: str, total: int, estimate_s: float | None, pixels: int) -> Job:
        job = Job(secrets.token_hex(ID_BYTES), operation, owner, total=total, estimate_s=estimate_s, pixels=pixels)
        self.jobs[job.id] = job
        self.save(job)
        return job

    def get(self, job_id: str, owner: str) -> Job:
        """The job, 404 when it does not exist, expired, or belongs to another key."""
        job = self.jobs.get(job_id)
        if job is None or job.owner != owner:
            raise NotFound(f"no job {job_id[:40]!r} (unknown, expired after {self.ttl_s:g} s, or another key's)")
        return job

    def start(self, job: Job) -> None:
        job.state, job.started_at = RUNNING, time.time()
        self.save(job)

    def finish(self, job: Job, data: bytes, media_type: str, headers: dict[str, str]) -> None:
        """Keep the result, or fail the job with 507 when it would pass the quota."""
        if self.bytes_used() + len(data) > self.max_result_bytes:
            self.fail(job, StorageFull.status, StorageFull.code,
                      f"the result of {len(data)} bytes would pass the {self.max_result_bytes} bytes of job results "
                      f"allowed on disk (jobs_max_result_bytes)")
            return
        path = self.result_path(job.id)
        tmp = path.with_suffix(TMP_SUFFIX + RESULT_SUFFIX)
        tmp.write_bytes(data)
        os.replace(tmp, path)
        job.media_type, job.headers, job.result_bytes = media_type, headers, len(data)
        job.state, job.finished_at, job.done = DONE, time.time(), job.total
        self.save(job)

    def fail(self, job: Job, status: int, code: str, message: str, state: str = FAILED, save: bool = True) -> None:
        job.state, job.finished_at = state, time.time()
        job.error = {"status": status, "code": code, "message": message}
        if save:
            self.save(job)

    def delete(self, job: Job) -> None:
        """Forget a finished job and its result."""
        self.result_path(job.id).unlink(missing_ok=True)
        self._record(job.id).unlink(missing_ok=True)
        self.jobs.pop(job.id, None)

    def counts(self) -> dict[str, int]:
        return {state: sum(1 for j in self.jobs.values() if j.state == state) for state in STATES}
