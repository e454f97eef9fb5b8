"""Long work as jobs: the service's ``/v1/jobs`` API from the client.

``Client.submit_decode`` / ``submit_encode`` send the same body and parameters as ``decode`` /
``encode`` to ``POST /v1/jobs/{decode,encode}`` and return a :class:`Job`; ``Client.wait(job)``
polls ``GET /v1/jobs/{id}`` (with a tqdm progress bar of the job's denoiser passes when tqdm is
installed and ``progress`` is on) and returns exactly what the synchronous call would have
returned; ``Client.cancel(job)`` stops it between passes. A job that fails raises the service's
error (its status and code), a cancelled one ``ServiceError`` 410 ``cancelled``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ._wire import Call

JOBS_ROUTE = "/v1/jobs"
FINISHED = ("done", "failed", "cancelled")
DEFAULT_POLL_S = 1.0
PASS_UNIT = "pass"  # the progress bar counts network passes (denoiser calls: tiles x steps)


@dataclass(frozen=True)
class Job:
    """A job's last known state (``GET /v1/jobs/{id}``)."""

    id: str
    operation: str
    state: str
    done: int
    total: int
    seconds_left: float | None
    error: dict | None
    raw: dict = field(repr=False)
    parse: Callable[[Any], Any] | None = field(default=None, repr=False, compare=False)  # result body -> value

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def path(self) -> str:
        return f"{JOBS_ROUTE}/{self.id}"


def job_call(call: Call) -> Call:
    """The synchronous ``call`` submitted as a job instead (same body, parameters and headers)."""
    operation = call.path.strip("/")
    return replace(call, path=f"{JOBS_ROUTE}/{operation}")


def job_from(doc: dict, parse: Callable[[Any], Any] | None = None) -> Job:
    progress = doc.get("progress") or {}
    return Job(id=str(doc["id"]), operation=str(doc.get("operation", "")), state=str(doc.get("state", "")),
               done=int(progress.get("done", 0)), total=int(progress.get("total", 0)),
               seconds_left=doc.get("seconds_left"), error=doc.get("error"), raw=doc, parse=parse)


class Progress:
    """A tqdm bar over a job's passes when tqdm is installed and wanted, else nothing."""

    def __init__(self, enabled: bool, description: str):
        self._bar = None
        if enabled:
            with contextlib.suppress(ImportError):
                from tqdm import tqdm  # noqa: PLC0415 - optional: the client needs only numpy, httpx, pillow

                self._bar = tqdm(total=0, unit=PASS_UNIT, desc=description)

    def update(self, job: Job) -> None:
        if self._bar is None:
            return
        if job.total and self._bar.total != job.total:
            self._bar.total = job.total
        self._bar.n = job.done
        if job.seconds_left is not None:
            self._bar.set_postfix_str(f"{job.state}, ~{job.seconds_left:.0f} s left", refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
