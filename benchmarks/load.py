"""`dgae bench load`: HTTP load against the service - a concurrency sweep for encode and decode.

Each level runs ``concurrency`` closed-loop clients (each sends its next request when the last
one answers) over one ``dgae_client.AsyncClient`` with retries off, so a 503 counts as an error,
until ``max_requests`` were sent or ``level_seconds`` passed; in-flight requests are
then awaited, so every level is bounded in requests and time. Per level: requests/s, p50/p95/p99
latency, error counts by status, and the mean backend batch size (from /metrics).

Without ``--url`` the benchmark starts two services on 127.0.0.1, one with dynamic batching
(``DGAE_MAX_BATCH_SIZE=--batch-size``) and one with ``DGAE_MAX_BATCH_SIZE=1``, and loads them in
turn level by level, so the batching ratio comes from one interleaved run; before that it times
the same backend in-process at both batch sizes (HTTP + batching overhead = service ÷ in-process).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass

import httpx
import torch

from dgae_client import AsyncClient, ClientError, ServiceError
from dgae.errors import InputError

from .common import int_list
from .inputs import photo_arrays
from .report import MS_PER_S, fmt, format_table, latency_summary, synchronizer, time_repeats

log = logging.getLogger(__name__)

CONCURRENCY = (1, 4, 16, 64)
RATIO_CONCURRENCY = 16            # the level the batching ratio is quoted at
DEFAULT_BATCH = 8
QUICK = {"size": 64, "steps": 1, "level_seconds": 6.0, "max_requests": 128, "repeats": 3}
FULL = {"size": 256, "steps": 2, "level_seconds": 30.0, "max_requests": 2000, "repeats": 5}
REQUEST_TIMEOUT_S = 300.0
WARMUP_REQUESTS_PER_SLOT = 2      # untimed requests per batch slot before each op's sweep
QUEUE_HEADROOM = 2                # service queue = headroom x max concurrency: measure speed, not 503s
METRIC_RE = re.compile(r'^dgae_batch_size_(sum|count)\{operation="(\w+)"\}\s+([0-9.eE+-]+)$', re.M)


@dataclass(frozen=True)
class Workload:
    """One request per op: a PNG photo to /encode, its latents (safetensors) to /decode."""

    size: int
    steps: int
    image_png: bytes
    latents_body: bytes
    latents: torch.Tensor          # [1, c, h, w]
    image: torch.Tensor            # [1, 3, size, size]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None,
                   help="benchmark this running service instead of starting two (no batching comparison)")
    p.add_argument("--backend", default="torch", help="backend kind the started services use (DGAE_BACKEND)")
    p.add_argument("--concurrency", type=int_list, default=CONCURRENCY, help="client counts, e.g. 1,4,16,64")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="DGAE_MAX_BATCH_SIZE of the batching run")
    p.add_argument("--max-wait-ms", type=float, default=None, help="DGAE_MAX_WAIT_MS (service default if unset)")
    p.add_argument("--size", type=int, default=None,
                   help=f"image side (default {FULL['size']}; --quick {QUICK['size']})")
    p.add_argument("--steps", type=int, default=None,
                   help=f"decode steps (default {FULL['steps']}; --quick {QUICK['steps']})")
    p.add_argument("--level-seconds", type=float, default=None, help="time bound per concurrency level")
    p.add_argument("--max-requests", type=int, default=None, help="request bound per concurrency level")
    p.add_argument("--ops", default="encode,decode", help="comma-separated: encode, decode")


def make_workload(checkpoint, size: int, steps: int) -> Workload:
    from backends.torch_backend import TorchBackend  # noqa: PLC0415
    from formats.images import encode_image, to_tensor  # noqa: PLC0415
    from formats.latents import dump_safetensors  # noqa: PLC0415

    arrays, _ = photo_arrays(1, size)
    image = to_tensor(arrays)
    latents = TorchBackend.from_checkpoint(checkpoint).encode(image)
    return Workload(size, steps, encode_image(arrays[0]), dump_safetensors(latents, {}), latents, image)


async def send(client: AsyncClient, op: str, wl: Workload, i: int) -> None:
    """One request through dgae_client (no retries: a 503 counts as an error, not as latency)."""
    if op == "encode":
        await client.encode(wl.image_png)
    else:
        await client.decode(wl.latents_body, steps=wl.steps, seeds=i, image_format="png")


async def scrape_batches(client: AsyncClient) -> dict[str, tuple[float, float]]:
    """{operation: (sum of batch sizes, number of batches)} from /metrics (empty if unavailable)."""
    try:
        text = await client.metrics()
    except ClientError:
        return {}
    out: dict[str, list[float]] = {}
    for kind, op, value in METRIC_RE.findall(text):
        out.setdefault(op, [0.0, 0.0])[0 if kind == "sum" else 1] = float(value)
    return {op: (s, c) for op, (s, c) in out.items()}


async def run_level(client: AsyncClient, op: str, wl: Workload, concurrency: int,
                    max_requests: int, seconds: float) -> dict:
    latencies, statuses = [], Counter()
    sent = 0
    before = await scrape_batches(client)
    start = time.perf_counter()
    deadline = start + seconds

    async def worker() -> None:
        nonlocal sent
        while sent < max_requests and time.perf_counter() < deadline:
            i = sent
            sent += 1
            t0 = time.perf_counter()
            try:
                await send(client, op, wl, i)
                key = str(httpx.codes.OK)
            except ServiceError as exc:
                key = str(exc.status)
            except ClientError as exc:
                key = type(exc).__name__
            if key == str(httpx.codes.OK):
                latencies.append(time.perf_counter() - t0)
            statuses[key] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    after = await scrape_batches(client)
    ok = len(latencies)
    batches = None
    if op in after:
        d_sum = after[op][0] - before.get(op, (0.0, 0.0))[0]
        d_count = after[op][1] - before.get(op, (0.0, 0.0))[1]
        batches = d_sum / d_count if d_count else None
    return {"op": op, "concurrency": concurrency, "sent": sent, "ok": ok, "errors": sent - ok,
            "statuses": dict(statuses), "seconds": elapsed, "requests_per_s": ok / elapsed if elapsed else 0.0,
            "latency": latency_summary(latencies), "mean_batch_size": batches}


async def sweep(urls: dict[str, str], warmups: dict[str, int], ops: list[str], wl: Workload,
                levels: tuple[int, ...], max_requests: int, seconds: float) -> dict[str, list[dict]]:
    """Every (op, level) on every service in turn - interleaved, so a load change on a shared
    machine hits both configurations alike instead of biasing their ratio."""
    limits = httpx.Limits(max_connections=max(levels), max_keepalive_connections=max(levels))
    out: dict[str, list[dict]] = {name: [] for name in urls}
    async with contextlib.AsyncExitStack() as stack:
        clients = {name: await stack.enter_async_context(
            AsyncClient(url, timeout_s=REQUEST_TIMEOUT_S, retries=0, limits=limits)) for name, url in urls.items()}
        for op in ops:
            for name, client in clients.items():                           # untimed warm-up
                await run_level(client, op, wl, warmups[name], warmups[name], seconds)
            for c in levels:
                for name, client in clients.items():
                    level = await run_level(client, op, wl, c, max_requests, seconds)
                    log.info("%s %s c=%d: %.2f req/s, p50 %.0f ms, %d errors", name, op, c,
                             level["requests_per_s"], level["latency"]["p50_ms"], level["errors"])
                    out[name].append(level)
    return out


def inprocess(checkpoint, kind: str, device: str, wl: Workload, batches: tuple[int, ...], repeats: int,
              options: dict) -> list[dict]:
    """Images/s of the same backend called directly at each batch size (no HTTP, no queue)."""
    from backends.factory import create_backend  # noqa: PLC0415

    backend = create_backend(kind, checkpoint, device=device, max_batch_size=max(batches), **options)
    sync = synchronizer(device)
    rows = []
    try:
        for b in batches:
            images, latents = wl.image.expand(b, -1, -1, -1).contiguous(), wl.latents.expand(b, -1, -1, -1).contiguous()
            for op, fn in (("encode", lambda x=images: backend.encode(x)),
                           ("decode", lambda z=latents: backend.decode(z, steps=wl.steps, seeds=0))):
                seconds = time_repeats(fn, 1, repeats, sync)
                lat = latency_summary(seconds)
                rows.append({"op": op, "batch": b, "latency": lat, "images_per_s": b * MS_PER_S / lat["p50_ms"]})
    finally:
        backend.close()
    return rows


def run_from_args(args: argparse.Namespace, checkpoint, device: str) -> dict:
    from .service_process import ServiceProcess  # noqa: PLC0415

    logging.getLogger("httpx").setLevel(logging.WARNING)       # one INFO line per request otherwise
    preset = QUICK if args.quick else FULL
    size = args.size or preset["size"]
    steps = args.steps or preset["steps"]
    seconds = args.level_seconds or preset["level_seconds"]
    max_requests = args.max_requests or preset["max_requests"]
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    if not ops or set(ops) - {"encode", "decode"}:
        raise InputError(f"--ops must list encode and/or decode, got {args.ops!r}")
    if args.batch_size < 2:
        raise InputError("--batch-size must be >= 2 (it is compared with max_batch_size=1)")
    levels = tuple(sorted(set(args.concurrency)))
    wl = make_workload(checkpoint, size, steps)
    report = {"benchmark": "load", "device": device, "quick": args.quick, "size": size, "steps": steps,
              "ops": ops, "concurrency": list(levels), "level_seconds": seconds, "max_requests": max_requests,
              "decode_format": "png", "configs": []}
    if args.url:
        levels_out = asyncio.run(sweep({"external": args.url}, {"external": DEFAULT_BATCH}, ops, wl, levels,
                                       max_requests, seconds))
        report["configs"].append({"name": "external", "url": args.url, "levels": levels_out["external"]})
        return report
    options = {"threads": args.threads} if args.threads and args.backend == "onnxruntime" else {}
    report["inprocess"] = inprocess(checkpoint, args.backend, device, wl, (1, args.batch_size), preset["repeats"],
                                    options)
    configs = {"batching": args.batch_size, "max_batch_size=1": 1}
    settings = {name: service_settings(args, checkpoint, device, batch, max(levels)) for name, batch in configs.items()}
    with contextlib.ExitStack() as stack, terminate_cleanly():
        urls = {name: stack.enter_context(ServiceProcess(env)) for name, env in settings.items()}
        levels_out = asyncio.run(sweep(urls, {n: b * WARMUP_REQUESTS_PER_SLOT for n, b in configs.items()}, ops, wl,
                                       levels, max_requests, seconds))
    for name, batch in configs.items():
        report["configs"].append({"name": name, "max_batch_size": batch, "levels": levels_out[name],
                                  "settings": {k: str(v) for k, v in settings[name].items()}})
    report["summary"] = summarize(report)
    return report


def service_settings(args: argparse.Namespace, checkpoint, device: str, batch: int, clients: int) -> dict:
    """The DGAE_* environment of one started service."""
    env = {"DGAE_CHECKPOINT": str(checkpoint), "DGAE_BACKEND": args.backend, "DGAE_DEVICE": device,
           "DGAE_MAX_BATCH_SIZE": batch, "DGAE_QUEUE_SIZE": QUEUE_HEADROOM * clients,
           "DGAE_MAX_ITEMS": 1, "DGAE_REQUEST_TIMEOUT_S": REQUEST_TIMEOUT_S}
    if args.max_wait_ms is not None:
        env["DGAE_MAX_WAIT_MS"] = args.max_wait_ms
    return env


@contextlib.contextmanager
def terminate_cleanly():
    """SIGTERM -> SystemExit, so the started services are stopped (context exits run) on kill."""
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _level(cfg: dict, op: str, c: int) -> dict | None:
    return next((lv for lv in cfg["levels"] if lv["op"] == op and lv["concurrency"] == c), None)


def summarize(report: dict) -> dict:
    """Batching ÷ max_batch_size=1 at every level, and service ÷ in-process at the same batch size."""
    cfgs = {c["name"]: c for c in report["configs"]}
    on, off = cfgs.get("batching"), cfgs.get("max_batch_size=1")
    out = {"batching_ratio": [], "service_vs_inprocess": []}
    for op in report["ops"]:
        for c in report["concurrency"]:
            a, b = _level(on, op, c), _level(off, op, c)
            if a and b and b["requests_per_s"]:
                out["batching_ratio"].append({"op": op, "concurrency": c,
                                              "ratio": a["requests_per_s"] / b["requests_per_s"]})
        for cfg in (on, off):
            base = next((r for r in report.get("inprocess", [])
                         if r["op"] == op and r["batch"] == cfg["max_batch_size"]), None)
            top = _level(cfg, op, max(report["concurrency"]))
            if base and top:
                out["service_vs_inprocess"].append({
                    "op": op, "config": cfg["name"], "batch": cfg["max_batch_size"], "concurrency": top["concurrency"],
                    "service_images_per_s": top["requests_per_s"], "inprocess_images_per_s": base["images_per_s"],
                    "ratio": top["requests_per_s"] / base["images_per_s"]})
    return out


def results_table(report: dict) -> str:
    headers = ["config", "op", "clients", "ok", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms", "mean batch"]
    rows = [[cfg["name"], lv["op"], str(lv["concurrency"]), str(lv["ok"]), str(lv["errors"]),
             fmt(lv["requests_per_s"], ".2f"), fmt(lv["latency"]["p50_ms"], ".0f"), fmt(lv["latency"]["p95_ms"], ".0f"),
             fmt(lv["latency"]["p99_ms"], ".0f"), fmt(lv["mean_batch_size"], ".2f")]
            for cfg in report["configs"] for lv in cfg["levels"]]
    return format_table(headers, rows)


def summary_text(report: dict) -> str:
    s = report.get("summary")
    if not s:
        return "(single external service: no batching comparison)"
    lines = [f"{report['size']}px, decode {report['steps']} step(s), same run:"]
    for r in s["batching_ratio"]:
        mark = "  <-" if r["concurrency"] == RATIO_CONCURRENCY else ""
        lines.append(f"  {r['op']}: batching / max_batch_size=1 at {r['concurrency']} clients: {r['ratio']:.2f}x{mark}")
    for r in s["service_vs_inprocess"]:
        lines.append(f"  {r['op']}: service ({r['config']}, {r['concurrency']} clients) / "
                     f"in-process batch {r['batch']}: "
                     f"{r['service_images_per_s']:.2f} / {r['inprocess_images_per_s']:.2f} img/s = {r['ratio']:.2f}")
    return "\n".join(lines)
