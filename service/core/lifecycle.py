"""Start-up and shut-down of an :class:`~service.core.engine.Engine`, apart from the request path.

Start-up returns at once and loads in the background (so liveness answers while a large model
loads): create the backend in a worker thread, warm it up with one tiny encode + decode, time one
decode tile and one encode tile for the cost model (:mod:`service.core.cost`), start one batcher
per operation, then report ready. Adapters' ``engine.on_start`` hooks run at start,
``engine.on_stop`` hooks drain beside the batchers at shut-down.

Shut-down runs under one deadline (``shutdown_timeout_s``): the batchers drain concurrently, then
the worker threads are joined off the event loop; the backend is closed only once no worker is
still computing in it (a batch abandoned at the deadline finishes on its own; the process exits
after it).
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import torch

from backends.base import Backend
from dgae.config import IMAGE_CHANNELS
from dgae.request import DecodeRequest, EncodeRequest

from .batcher import DynamicBatcher
from .engine import DECODE, ENCODE, OPERATIONS, Engine

log = logging.getLogger(__name__)

WARMUP_STEPS = 1
WARMUP_SEED = 0
WORKER_EXIT_GRACE_S = 1.0  # after the deadline, idle worker threads still get this long to exit


def start(engine: Engine) -> None:
    """Create the worker threads and batchers, then load the model in the background."""
    s = engine.settings
    if s.torch_threads:
        torch.set_num_threads(s.torch_threads)  # process-wide
    runs = {ENCODE: engine.encode_batch, DECODE: engine.decode_batch}
    for op in OPERATIONS:
        engine.executors[op] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"dgae-{op}")
        engine.batchers[op] = DynamicBatcher(op, runs[op], engine.executors[op], engine.metrics,
                                             max_batch_size=s.max_batch_size, max_wait_s=s.max_wait_ms / 1000,
                                             queue_size=s.queue_size, retry_after_s=s.retry_after_s)
    engine.load_task = asyncio.get_running_loop().create_task(_load(engine), name="dgae-load")
    for hook in engine.on_start:
        hook()


async def stop(engine: Engine) -> None:
    """Stop accepting, drain the batchers and join the workers within ``shutdown_timeout_s``."""
    engine.ready = False
    engine.metrics.ready.set(0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + engine.settings.shutdown_timeout_s
    if engine.load_task and not engine.load_task.done():
        engine.load_task.cancel()
    await asyncio.gather(*(b.close(deadline - loop.time()) for b in engine.batchers.values()),
                         *(hook(deadline - loop.time()) for hook in engine.on_stop))
    idle = await _join_workers(engine, deadline - loop.time())
    if engine.backend and idle:
        engine.backend.close()
    elif engine.backend:
        log.warning("backend left open: a worker thread is still computing after %ds",
                    engine.settings.shutdown_timeout_s)
    log.info("service stopped")


async def _join_workers(engine: Engine, timeout_s: float) -> bool:
    """Shut the worker threads down without blocking the event loop; True once all have exited."""
    for executor in engine.executors.values():
        executor.shutdown(wait=False, cancel_futures=True)
    loop = asyncio.get_running_loop()
    joins = [loop.run_in_executor(None, executor.shutdown, True) for executor in engine.executors.values()]
    if not joins:
        return True
    _, busy = await asyncio.wait(joins, timeout=max(timeout_s, WORKER_EXIT_GRACE_S))
    return not busy


async def _load(engine: Engine) -> None:
    loop = asyncio.get_running_loop()
    try:
        if engine.backend is None:
            engine.backend = await loop.run_in_executor(engine.executors[ENCODE], _create_backend, engine)
        if engine.settings.warmup:
            latents = await loop.run_in_executor(engine.executors[ENCODE], _warmup_encode, engine.backend)
            await loop.run_in_executor(engine.executors[DECODE], _warmup_decode, engine.backend, latents)
        info = engine.backend.info()
        engine.cost.bind(info.name, info.device)
        if engine.settings.warmup and engine.settings.calibrate:
            await loop.run_in_executor(engine.executors[DECODE], _calibrate, engine)
    except Exception as exc:  # noqa: BLE001 - reported by /readyz and the log, process stays up
        engine.load_error = f"{type(exc).__name__}: {exc}"
        log.error("model failed to load: %s", engine.load_error, exc_info=exc)
        return
    for batcher in engine.batchers.values():
        batcher.start()
    engine.metrics.model_info.labels(engine.spec.preset, info.name, info.device, info.precision,
                                     engine.backend.checkpoint_sha256).set(1)
    engine.ready = True
    engine.metrics.ready.set(1)
    log.info("ready: %s on %s (%s), backend %s", engine.spec.preset, info.device, info.precision, info.name)


def _calibrate(engine: Engine) -> None:
    """The cost model's first rates; a runtime that cannot run a whole tile (a narrow TensorRT
    profile) leaves them to be learned from the first finished work."""
    try:
        engine.cost.calibrate(engine.backend)
    except Exception as exc:  # noqa: BLE001 - the service runs without a start-up rate
        log.warning("cost model not calibrated (%s: %s); learning it from finished work", type(exc).__name__, exc)


def _create_backend(engine: Engine) -> Backend:
    from backends.factory import create_backend  # noqa: PLC0415 - heavy, loaded in the worker

    s = engine.settings
    log.info("loading %s with backend %s on %s (%s)", engine.checkpoint, s.backend, s.device, s.precision)
    paths = {k: v for k, v in (("onnx_dir", s.onnx_dir), ("engine_dir", s.engine_dir)) if v}
    return create_backend(s.backend, engine.checkpoint, device=s.device, precision=s.precision,
                          max_batch_size=s.max_batch_size, compile=s.compile, cuda_graph=s.cuda_graph, **paths)


def _warmup_encode(backend: Backend) -> torch.Tensor:
    side = backend.warmup_side()  # inside the runtime's accepted sizes (TensorRT profiles)
    images = torch.zeros(1, IMAGE_CHANNELS, side, side)
    return backend.run_encode(EncodeRequest.resolve(backend.config, images, "mean"))


def _warmup_decode(backend: Backend, latents: torch.Tensor) -> None:
    backend.run_decode(DecodeRequest.resolve(backend.config, latents, WARMUP_STEPS, WARMUP_SEED))
    side = latents.shape[-1] * backend.config.downsample_factor
    log.info("warm-up done (%dx%d image)", side, side)
