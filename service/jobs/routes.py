"""The jobs adapter: long work submitted, polled and fetched instead of held open.

- ``POST /v1/jobs/decode`` and ``POST /v1/jobs/encode``: the bodies and query parameters of
  ``/decode`` and ``/encode`` (the same handlers read and check them: :func:`prepare_decode`,
  :func:`prepare_encode`) -> ``202`` with the job and ``Location: /v1/jobs/{id}``. Checks that
  fail at once (bad input, 413 pixels) fail the submission, not a job.
- ``GET /v1/jobs/{id}``: ``state`` (queued, running, done, failed, cancelled), ``progress``
  ``{done, total, fraction}`` in network passes (a decode: tiles x steps), ``seconds_left``.
- ``GET /v1/jobs/{id}/result``: exactly the synchronous route's body, media type and headers; a
  failed or cancelled job answers its error (410 for cancelled); one not finished, 409.
- ``GET /v1/jobs/{id}/events``: server-sent events, one ``progress`` event per change, ``end`` last.
- ``DELETE /v1/jobs/{id}``: cancels a queued job at once and a running one between two passes
  (``202``); deletes a finished job and its result (``204``).

Jobs belong to the API key that submitted them (another key gets 404). See :mod:`.runner` for
where they compute and :mod:`.store` for what is kept on disk.
"""
from __future__ import annotations

import asyncio
import inspect
import json
from typing import Callable

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from ..core.engine import Engine
from ..core.errors import JobNotDone, error_response, openapi_errors, retry_after
from ..core.http import BEARER, check_query, engine, require_api_key
from ..native import routes as native
from .runner import JobRunner
from .store import DONE, Job, owner_of

ROUTE = "/v1/jobs"
EVENT_POLL_S = 0.25  # how often an event stream looks for progress
EVENT_HEARTBEAT_S = 15.0  # a comment line this often keeps proxies from closing a quiet stream
JOB_ERRORS = openapi_errors(400, 401, 404, 413, 415, 422, 429, 503, 507)


def runner(request: Request) -> JobRunner:
    return request.app.state.jobs


def owner(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return owner_of(token.strip() if scheme == BEARER and token.strip() else None)


def view(run: JobRunner, job: Job) -> dict:
    out = job.view(run.store.ttl_s)
    out["links"] = {"self": f"{ROUTE}/{job.id}", "result": f"{ROUTE}/{job.id}/result",
                    "events": f"{ROUTE}/{job.id}/events"}
    return out


def _submit_route(sync_handler: Callable, prepare: Callable) -> Callable:
    """A submit handler with ``sync_handler``'s parameters (same names, types, defaults, docs)."""
    async def submit(request: Request, **params) -> JSONResponse:
        eng: Engine = engine(request)
        eng.require_ready()
        run = runner(request)
        who = owner(request)
        run.store.check_room(who)
        prepared = await prepare(request, eng, eng.admission.check, **params)
        job = run.submit(prepared, who)
        return JSONResponse(view(run, job), status_code=202, headers={"Location": f"{ROUTE}/{job.id}"})

    submit.__signature__ = inspect.signature(sync_handler, eval_str=True)
    submit.__name__ = f"submit_{sync_handler.__name__}"
    return submit


async def get_job(request: Request, job_id: str) -> JSONResponse:
    run = runner(request)
    return JSONResponse(view(run, run.store.get(job_id, owner(request))))


async def get_result(request: Request, job_id: str) -> Response:
    run = runner(request)
    job = run.store.get(job_id, owner(request))
    if job.state == DONE:
        data = await run_in_threadpool(run.store.result_path(job.id).read_bytes)
        return Response(data, media_type=job.media_type, headers=job.headers)
    if job.error:
        e = job.error
        return error_response(e["status"], e["code"], e["message"])
    raise JobNotDone(f"job {job.id} is {job.state} ({job.done} of {job.total} passes); poll {ROUTE}/{job.id}",
                     headers=retry_after(run.engine.settings.retry_after_s))


async def events(request: Request, job_id: str) -> StreamingResponse:
    run = runner(request)
    job = run.store.get(job_id, owner(request))

    async def stream():
        last, quiet = None, 0.0
        while True:
            now = (job.state, job.done)
            if now != last:
                last, quiet = now, 0.0
                yield f"event: progress\ndata: {json.dumps(view(run, job))}\n\n"
            if job.finished:
                yield f"event: end\ndata: {json.dumps({'id': job.id, 'state': job.state})}\n\n"
                return
            if quiet >= EVENT_HEARTBEAT_S:
                quiet = 0.0
                yield ": waiting\n\n"
            await asyncio.sleep(EVENT_POLL_S)
            quiet += EVENT_POLL_S

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def delete_job(request: Request, job_id: str) -> Response:
    run = runner(request)
    job = run.store.get(job_id, owner(request))
    if job.finished:
        await run_in_threadpool(run.store.delete, job)
        run.update_metrics()
        return Response(status_code=204)
    run.cancel(job)
    return JSONResponse(view(run, job), status_code=202)


def build_router() -> APIRouter:
    router = APIRouter(prefix=ROUTE, tags=["jobs"], dependencies=[Depends(require_api_key), Depends(check_query)])
    router.add_api_route("/decode", _submit_route(native.decode, native.prepare_decode), methods=["POST"],
                         status_code=202, summary="Submit a decode as a job (same body and parameters as /decode)",
                         openapi_extra=native.DECODE_BODY, responses=JOB_ERRORS)
    router.add_api_route("/encode", _submit_route(native.encode, native.prepare_encode), methods=["POST"],
                         status_code=202, summary="Submit an encode as a job (same body and parameters as /encode)",
                         openapi_extra=native.ENCODE_BODY, responses=JOB_ERRORS)
    router.add_api_route("/{job_id}", get_job, methods=["GET"], summary="A job's state, progress and time left",
                         responses=openapi_errors(401, 404))
    router.add_api_route("/{job_id}/result", get_result, methods=["GET"], response_class=Response,
                         summary="A finished job's result: exactly the synchronous route's answer",
                         responses={**openapi_errors(400, 401, 404, 409, 410, 413, 500, 503, 507),
                                    200: {"description": "the body /decode or /encode would have answered"}})
    router.add_api_route("/{job_id}/events", events, methods=["GET"], response_class=StreamingResponse,
                         summary="Server-sent progress events", responses={
                             **openapi_errors(401, 404),
                             200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                                   "description": "progress events, then end"}})
    router.add_api_route("/{job_id}", delete_job, methods=["DELETE"], status_code=202,
                         summary="Cancel a queued or running job; delete a finished one", response_class=Response,
                         responses={**openapi_errors(401, 404), 202: {"description": "cancelling: the job JSON"},
                                    204: {"description": "a finished job and its result deleted"}})
    return router


def install(app: FastAPI, eng: Engine) -> None:
    """Serve /v1/jobs on ``app`` and run its jobs on ``eng``'s workers (started and drained with it)."""
    run = JobRunner(eng)
    app.state.jobs = run
    eng.on_start.append(run.start)
    eng.on_stop.append(run.stop)
    eng.work_ahead.append(run.seconds_ahead)
    app.include_router(build_router())

