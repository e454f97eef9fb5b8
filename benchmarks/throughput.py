"""`dgae bench backends`: in-process encode/decode throughput and latency of every backend this
machine can run, over batch sizes, image sizes and decode steps.

Per case: ``warmup`` untimed calls, then ``repeats`` timed calls (device-synchronised on CUDA);
latency p50/p99 over the repeats, throughput = batch / median latency. Inputs are real photos
(see :mod:`benchmarks.inputs`); decode inputs are those photos' latents. Every backend's
throughput is divided by torch eager fp32's on the same case *from the same run*. Backends that
cannot run here are listed as skipped with the reason. Decode rows also carry the counted FLOPs
and the achieved TFLOP/s; on a known GPU, the fraction of its dense bf16 peak.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import kernels
from dgae.errors import DGAEError

from . import flops
from .inputs import image_batch
from .report import MS_PER_S, fmt, format_table, latency_summary, synchronizer, time_repeats

log = logging.getLogger(__name__)

BASELINE = "torch-eager-fp32"
RATIO_BATCH = 8                     # the batch size the summary ratios are quoted at
DECODE_SEED = 0
TERA = 1e12


@dataclass(frozen=True)
class BackendSpec:
    """One benchmarked configuration: a factory kind plus precision/options/environment."""

    name: str
    kind: str
    precision: str = "fp32"
    cuda_only: bool = False
    slow_warmup: bool = False         # excluded from --quick on CPU (compile takes minutes)
    options: dict = field(default_factory=dict)
    kernels: str = "auto"  # kernels.use_kernels mode while this backend is measured


# Eager rows pin the PyTorch reference ops so "eager" means plain PyTorch on every device.
SPECS: tuple[BackendSpec, ...] = (            # slow-to-start runtimes last: a total budget cuts them first
    BackendSpec(BASELINE, "torch", kernels="reference"),
    BackendSpec("onnxruntime-fp32", "onnxruntime"),
    BackendSpec("torch-eager-bf16", "torch", "bf16", cuda_only=True, kernels="reference"),
    BackendSpec("torch-triton-bf16", "torch", "bf16", cuda_only=True, kernels="triton"),
    BackendSpec("onnxruntime-fp16", "onnxruntime", "fp16", cuda_only=True),
    BackendSpec("tensorrt-fp16", "tensorrt", "fp16", cuda_only=True),
    BackendSpec("torch-compile-fp32", "torch", slow_warmup=True, options={"compile": True},
                kernels="reference"),
    BackendSpec("torch-compile-bf16", "torch", "bf16", cuda_only=True, slow_warmup=True, options={"compile": True},
                kernels="reference"),
    BackendSpec("onnxruntime-tensorrt-fp16", "onnxruntime", "fp16", cuda_only=True, slow_warmup=True,
                options={"tensorrt_ep": True}),
)


@dataclass(frozen=True)
class Grid:
    """Cases: encode at every (size, batch); decode at every (size, batch, steps), where sizes
    after ``steps_sizes`` only run ``steps[0]`` (decode time is linear in steps)."""

    sizes: tuple[int, ...]
    batches: tuple[int, ...]
    steps: tuple[int, ...]
    steps_sizes: int
    warmup: int
    repeats: int
    min_seconds: float = 0.0          # keep repeating short cases until this much timed time...
    max_repeats: int = 0              # ...up to this many runs (GPU: batch-1 calls take ms)

    def cases(self) -> list[tuple[str, int, int, int]]:
        out = []
        for i, size in enumerate(self.sizes):
            for batch in self.batches:
                out.append(("encode", size, batch, 0))
                for steps in self.steps if i < self.steps_sizes else self.steps[:1]:
                    out.append(("decode", size, batch, steps))
        return out


QUICK_GRID = Grid(sizes=(64, 128), batches=(1, RATIO_BATCH), steps=(1, 2, 4, 8), steps_sizes=1,
                  warmup=1, repeats=2)
FULL_CPU_GRID = Grid(sizes=(256, 512), batches=(1, 4, RATIO_BATCH), steps=(1, 2, 4, 8), steps_sizes=1,
                     warmup=1, repeats=3)
FULL_GPU_GRID = Grid(sizes=(256, 512), batches=(1, RATIO_BATCH, 32), steps=(1, 2, 4, 8), steps_sizes=1,
                     warmup=1, repeats=3, min_seconds=0.5, max_repeats=50)


def select_specs(names: list[str] | None) -> list[BackendSpec]:
    if not names:
        return list(SPECS)
    known = {s.name: s for s in SPECS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DGAEError(f"unknown backend(s) {unknown}; choose from: {', '.join(known)}")
    if BASELINE not in names:
        names = [BASELINE, *names]            # ratios need the baseline from the same run
    return [known[n] for n in names]


def skip_reason(spec: BackendSpec, device: str, quick: bool) -> str | None:
    if spec.cuda_only and not device.startswith("cuda"):
        return "needs a CUDA device (none on this machine)"
    if quick and spec.slow_warmup and not device.startswith("cuda"):
        return "excluded by --quick: torch.compile warm-up takes minutes on CPU (run without --quick)"
    return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def make_backend(spec: BackendSpec, checkpoint: Path, device: str, max_batch: int, runtime_options: dict):
    """``runtime_options``: per-kind extras from the command line, e.g. {"tensorrt": {"engine_dir": ...}}."""
    from backends.factory import create_backend  # noqa: PLC0415

    options = {**spec.options, **runtime_options.get(spec.kind, {})}
    return create_backend(spec.kind, checkpoint, device=device, precision=spec.precision,
                          max_batch_size=max_batch, **options)


def run_backend(spec: BackendSpec, checkpoint: Path, device: str, grid: Grid, inputs: dict,
                budget_s: float | None, pass_flops: dict, peak_tflops: float | None,
                runtime_options: dict, clock: str = "wall") -> dict:
    """Measure every grid case on one backend; {'rows': [...]} or {'skipped': reason}."""
    started = time.monotonic()
    with kernels.use_kernels(spec.kernels):
        try:
            backend = make_backend(spec, checkpoint, device, max(grid.batches), runtime_options)
        except Exception as exc:  # noqa: BLE001 - any runtime that cannot start here is skipped
            return {"skipped": f"{type(exc).__name__}: {first_line(exc)}"}
        info = backend.info().to_dict()
        sync = synchronizer(device)
        rows, cut = [], []
        try:
            for op, size, batch, steps in grid.cases():
                if budget_s is not None and time.monotonic() - started > budget_s:
                    cut.append({"op": op, "size": size, "batch": batch, "steps": steps})
                    continue
                images, latents = inputs[size]
                if op == "encode":
                    fn = lambda b=batch, x=images: backend.encode(x[:b])  # noqa: E731
                else:
                    fn = lambda b=batch, z=latents, s=steps: backend.decode(  # noqa: E731
                        z[:b], steps=s, seeds=DECODE_SEED)
                log.info("%s %s %dpx batch %d steps %s", spec.name, op, size, batch, steps or "-")
                seconds = time_repeats(fn, grid.warmup, grid.repeats, sync, grid.min_seconds, grid.max_repeats,
                                       clock)
                rows.append(make_row(spec.name, op, size, batch, steps, seconds, backend.config,
                                     pass_flops, peak_tflops))
        except Exception as exc:  # noqa: BLE001 - one failing runtime must not hide the others
            log.warning("%s failed: %s", spec.name, exc)
            return {"info": info, "rows": rows, "error": f"{type(exc).__name__}: {first_line(exc)}"}
        finally:
            backend.close()
    out = {"info": info, "rows": rows, "seconds": time.monotonic() - started}
    if cut:
        out["cut_by_budget"] = cut
    return out


def make_row(name: str, op: str, size: int, batch: int, steps: int, seconds: list[float], config,
             pass_flops: dict, peak_tflops: float | None) -> dict:
    lat = latency_summary(seconds)
    row = {"backend": name, "op": op, "size": size, "batch": batch, "steps": steps or None,
           "latency": lat, "images_per_s": batch * MS_PER_S / lat["p50_ms"]}
    if op == "decode":
        work = pass_flops[size] * batch * flops.denoiser_calls(config, steps)
        row["flops"] = work
        row["achieved_tflops"] = work / (lat["p50_ms"] / MS_PER_S) / TERA
        row["peak_fraction"] = row["achieved_tflops"] / peak_tflops if peak_tflops else None
    return row


def add_ratios(rows: list[dict]) -> None:
    """ratio_vs_eager = throughput / torch-eager-fp32 throughput on the same case (same run)."""
    base = {(r["op"], r["size"], r["batch"], r["steps"]): r["images_per_s"]
            for r in rows if r["backend"] == BASELINE}
    for r in rows:
        ref = base.get((r["op"], r["size"], r["batch"], r["steps"]))
        r["ratio_vs_eager"] = r["images_per_s"] / ref if ref else None


def prepare_inputs(checkpoint: Path, grid: Grid) -> tuple[dict, str]:
    """{size: (images [B, 3, s, s], latents)} with latents from the eager torch encoder."""
    from backends.torch_backend import TorchBackend  # noqa: PLC0415

    encoder = TorchBackend.from_checkpoint(checkpoint)
    out, source = {}, "photos"
    for size in grid.sizes:
        images, source = image_batch(max(grid.batches), size)
        out[size] = (images, encoder.encode(images))
    return out, source


@torch.no_grad()  # scoped: in-process callers (tests, notebooks) keep autograd
def run(checkpoint: Path, device: str, grid: Grid, quick: bool, names: list[str] | None,
        budget_s: float | None, peak_tflops: float | None, runtime_options: dict | None = None,
        total_budget_s: float | None = None, clock: str = "wall") -> dict:
    """Benchmark every selected backend. ``budget_s`` bounds each backend, ``total_budget_s`` the
    whole run (a backend not started in time is skipped with that reason)."""
    from dgae.checkpoint import read_config  # noqa: PLC0415

    config = read_config(checkpoint)
    inputs, source = prepare_inputs(checkpoint, grid)
    pass_flops = {s: flops.decoder_pass_flops(config, s, s) for s in grid.sizes}
    backends, rows = {}, []
    started = time.monotonic()
    for spec in select_specs(names):
        reason = skip_reason(spec, device, quick)
        left = None if total_budget_s is None else total_budget_s - (time.monotonic() - started)
        if reason is None and left is not None and left <= 0:
            reason = f"total time budget ({total_budget_s:.0f} s) spent before it could start"
        budget = left if budget_s is None else (budget_s if left is None else min(budget_s, left))
        result = {"skipped": reason} if reason else run_backend(
            spec, checkpoint, device, grid, inputs, budget, pass_flops, peak_tflops, runtime_options or {}, clock)
        if "skipped" in result:
            log.info("skipped %s: %s", spec.name, result["skipped"])
        rows.extend(result.pop("rows", []))
        backends[spec.name] = {"spec": asdict(spec), **result}
    add_ratios(rows)
    return {"benchmark": "backends", "device": device, "quick": quick, "clock": clock, "grid": asdict(grid),
            "input_source": source, "decoder_pass_gflops": {str(s): f / 1e9 for s, f in pass_flops.items()},
            "bf16_peak_tflops": peak_tflops, "baseline": BASELINE, "backends": backends, "rows": rows}


# ----------------------------------------------------------------------------- output
def results_table(report: dict) -> str:
    gpu = any(r.get("peak_fraction") is not None for r in report["rows"])
    unit = "cpu ms" if report.get("clock") == "cpu" else "ms"
    headers = ["backend", "op", "px", "batch", "steps", f"p50 {unit}", f"p99 {unit}", "img/s", "x eager", "TFLOP/s"]
    headers += ["% bf16 peak"] if gpu else []
    body = []
    for r in report["rows"]:
        line = [r["backend"], r["op"], str(r["size"]), str(r["batch"]), str(r["steps"] or "-"),
                fmt(r["latency"]["p50_ms"], ".1f"), fmt(r["latency"]["p99_ms"], ".1f"),
                fmt(r["images_per_s"], ".2f"), fmt(r["ratio_vs_eager"], ".2f"),
                fmt(r.get("achieved_tflops"), ".3f")]
        if gpu:
            frac = r.get("peak_fraction")
            line.append(fmt(None if frac is None else 100 * frac, ".1f"))
        body.append(line)
    return format_table(headers, body)


def skipped_lines(report: dict) -> list[str]:
    out = []
    for name, b in report["backends"].items():
        if "skipped" in b:
            out.append(f"skipped {name}: {b['skipped']}")
        if "error" in b:
            out.append(f"FAILED {name}: {b['error']}")
        if b.get("cut_by_budget"):
            out.append(f"{name}: {len(b['cut_by_budget'])} case(s) not run (time budget)")
    return out


def ratio_batch(report: dict) -> int:
    """RATIO_BATCH when the grid has it, else its largest batch."""
    batches = report["grid"]["batches"]
    return RATIO_BATCH if RATIO_BATCH in batches else max(batches)


def ratio_summary(report: dict) -> list[dict]:
    """Decode ratios vs eager at the ratio batch, one per (backend, size, steps) in this run."""
    batch = ratio_batch(report)
    return [{"backend": r["backend"], "size": r["size"], "steps": r["steps"], "batch": batch,
             "ratio_vs_eager": r["ratio_vs_eager"], "images_per_s": r["images_per_s"]}
            for r in report["rows"]
            if r["op"] == "decode" and r["batch"] == batch and r["backend"] != BASELINE
            and r["ratio_vs_eager"] is not None]


def summary_text(report: dict) -> str:
    lines = [f"decode throughput ratio vs {BASELINE} at batch {ratio_batch(report)} (same run):"]
    ratios = ratio_summary(report)
    lines += [f"  {s['backend']} / {BASELINE}  {s['size']}px  {s['steps']} step(s): "
              f"{s['ratio_vs_eager']:.2f}x" for s in ratios] or ["  (no other backend measured)"]
    return "\n".join(lines)
