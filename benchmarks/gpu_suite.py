"""The GPU suite's Python steps (``benchmarks/gpu_suite.sh`` runs each in its own process under a
hard time limit, then merges their parts into one JSON).

- ``peak``: the card's measured bf16 matmul peak (large square matmuls back to back), beside its
  datasheet dense bf16 peak when known (:mod:`benchmarks.flops`).
- ``decode``: decode images/s of one preset for torch runtime variants (:data:`VARIANTS`: eager
  bf16, torch.compile, CUDA-graph replay, Triton kernels, Triton + CUDA graph). Per variant the best
  batch is searched at the first step count, then every step count runs at that batch. Rows carry
  the decoder FLOPs counted by :func:`benchmarks.flops.decoder_pass_flops` and the achieved TFLOP/s;
  the part is rewritten after every row, so a step killed at its time limit keeps what it measured.
- ``merge``: one ``gpu-suite.json``: the machine, every step's exit status, the peak, the decode
  rows with their fraction of the measured (and datasheet) peak, the best row per (preset, variant,
  steps) and its ratio to eager, the Triton kernel report (:mod:`benchmarks.gpu_kernels`) and the
  one-pass VAE anchors (``dgae bench anchors``), all from the same run.

``--dry-run`` runs the same code on CPU at tiny sizes (tiny presets, 16 px, batch 1): CUDA
graphs are reported as skipped with their error, and torch.compile - whose Inductor CPU build takes
minutes - is replaced by a whole-graph trace check (``fullgraph=True``, eager backend).

Decode inputs are seeded Gaussian latents (never zeros): decode time does not depend on content.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import kernels
from dgae.errors import DGAEError, InputError

from . import flops
from .report import MS_PER_S, fmt, format_table, latency_summary, read_json, synchronizer, time_repeats, write_json

log = logging.getLogger(__name__)

PRECISION = "bf16"
TERA = 1e12
LATENT_SEED = 0
DECODE_SEED = 0
RESULT_NAME = "gpu-suite.json"
PEAK_PART, KERNELS_PART, STEPS_PART = "peak.json", "gpu_kernels.json", "steps.json"
DECODE_PART_PREFIX, ANCHORS_PART_PREFIX = "decode-", "anchors-"
BASELINE_VARIANT = "eager"


@dataclass(frozen=True)
class Variant:
    """A torch runtime configuration: factory options and the kernels.use_kernels mode."""

    name: str
    kernels: str
    options: dict = field(default_factory=dict)


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant(BASELINE_VARIANT, "reference"),                    # PyTorch ops; attention = SDPA
    Variant("compile", "reference", {"compile": True}),        # what DGAE_COMPILE=true serves
    Variant("cuda-graph", "reference", {"cuda_graph": True}),  # what DGAE_CUDA_GRAPH=true serves
    Variant("triton", "triton"),                               # DGAE_KERNELS=triton
    Variant("triton+cuda-graph", "triton", {"cuda_graph": True}),
)}


@dataclass(frozen=True)
class DecodeGrid:
    size: int
    batches: tuple[int, ...]
    steps: tuple[int, ...]
    warmup: int
    repeats: int
    min_seconds: float
    max_repeats: int


GPU_GRID = DecodeGrid(size=256, batches=(8, 32, 64), steps=(1, 2, 4), warmup=1, repeats=3, min_seconds=0.3,
                      max_repeats=20)
# dry run: one batch (the Triton interpreter costs seconds per U-Net pass); two step counts
DRY_GRID = DecodeGrid(size=16, batches=(1,), steps=(1, 2), warmup=0, repeats=1, min_seconds=0.0, max_repeats=0)
PEAK_GPU = {"size": 8192, "inner": 10, "repeats": 10}
PEAK_DRY = {"size": 256, "inner": 2, "repeats": 2}
DRY_TRACE_SIDE = 16


# ----------------------------------------------------------------------------- peak
@torch.no_grad()
def measure_peak(device: str, size: int, inner: int, repeats: int) -> dict:
    """Best bf16 matmul TFLOP/s over ``repeats`` timings of ``inner`` back-to-back [size x size] products."""
    gen = torch.Generator(device=device).manual_seed(LATENT_SEED)
    a, b = (torch.randn(size, size, generator=gen, device=device, dtype=torch.bfloat16) for _ in range(2))
    out = torch.empty_like(a)
    sync = synchronizer(device)

    def run():
        for _ in range(inner):
            torch.matmul(a, b, out=out)

    seconds = time_repeats(run, 1, repeats, sync)
    per_matmul_flops = 2.0 * size ** 3
    best = max(per_matmul_flops * inner / s for s in seconds) / TERA
    from .machine import gpu_info  # noqa: PLC0415

    name = (gpu_info() or {}).get("name")
    return {"benchmark": "peak", "device": device, "dtype": "bf16", "size": size, "inner": inner,
            "repeats": repeats, "measured_tflops": best, "gpu": name,
            "datasheet_tflops": flops.bf16_peak_tflops(name), "latency": latency_summary(seconds)}


# ----------------------------------------------------------------------------- decode
def seeded_latents(config, batch: int, size: int) -> torch.Tensor:
    f = config.downsample_factor
    gen = torch.Generator().manual_seed(LATENT_SEED)
    return torch.randn(batch, config.latent_channels, size // f, size // f, generator=gen)


def decode_row(preset: str, variant: str, batch: int, steps: int, seconds: list[float], pass_flops: float,
               config) -> dict:
    lat = latency_summary(seconds)
    work = pass_flops * batch * flops.denoiser_calls(config, steps)
    return {"preset": preset, "variant": variant, "batch": batch, "steps": steps, "latency": lat,
            "images_per_s": batch * MS_PER_S / lat["p50_ms"], "flops": work,
            "achieved_tflops": work / (lat["p50_ms"] / MS_PER_S) / TERA}


def fullgraph_check(backend) -> str:
    """The decoder traces as one graph (what torch.compile needs to fuse it); raises if it breaks."""
    decoder = backend.model.decoder
    traced = torch.compile(decoder.forward_buffer, fullgraph=True, backend="eager")
    c = backend.config.latent_channels
    buf = torch.randn(1, 3 + c, DRY_TRACE_SIDE, DRY_TRACE_SIDE, dtype=backend.dtype)
    with torch.no_grad():
        traced(buf, torch.full((1,), 0.5))
    return "the decoder traces as one graph (fullgraph=True)"


def graph_breaks() -> int:
    from torch._dynamo.utils import counters  # noqa: PLC0415

    return int(sum(counters["graph_break"].values()))


def run_variant(variant: Variant, checkpoint: Path, preset: str, device: str, grid: DecodeGrid, deadline: float,
                dry_run: bool, emit) -> dict:
    """Measure one variant; ``emit(row)`` after every row. Returns the variant's summary."""
    from backends.factory import create_backend  # noqa: PLC0415

    started = time.monotonic()
    dry_compile = dry_run and variant.options.get("compile")
    options = {} if dry_compile else variant.options
    with kernels.use_kernels(variant.kernels):
        try:
            backend = create_backend("torch", checkpoint, device=device, precision=PRECISION, **options)
        except (DGAEError, RuntimeError) as exc:
            return {"skipped": f"{type(exc).__name__}: {exc}"}
        try:
            if dry_compile:
                return {"skipped": "dry run on CPU: Inductor's CPU compile takes minutes",
                        "check": fullgraph_check(backend)}
            out = {"setup_s": time.monotonic() - started, "info": backend.info().to_dict(), "cut": []}
            config, sync = backend.config, synchronizer(device)
            pass_flops = flops.decoder_pass_flops(config, grid.size, grid.size)
            latents = seeded_latents(config, max(grid.batches), grid.size)
            breaks_before = graph_breaks()

            def measure(batch: int, steps: int) -> dict | None:
                if time.monotonic() > deadline:
                    out["cut"].append({"batch": batch, "steps": steps})
                    return None
                z = latents[:batch]
                log.info("%s %s batch %d steps %d", preset, variant.name, batch, steps)
                seconds = time_repeats(lambda: backend.decode(z, steps=steps, seeds=DECODE_SEED), grid.warmup,
                                       grid.repeats, sync, grid.min_seconds, grid.max_repeats)
                row = decode_row(preset, variant.name, batch, steps, seconds, pass_flops, config)
                emit(row)
                return row

            search = {}
            for batch in grid.batches:
                try:
                    row = measure(batch, grid.steps[0])
                except torch.cuda.OutOfMemoryError as exc:
                    out["oom_batch"] = {"batch": batch, "error": str(exc).splitlines()[0]}
                    break
                if row is not None:
                    search[batch] = row
            if not search:
                return out
            best = max(search, key=lambda b: search[b]["images_per_s"])
            out["best_batch"] = best
            for steps in grid.steps[1:]:
                measure(best, steps)
            if variant.options.get("compile"):
                out["graph_breaks"] = graph_breaks() - breaks_before
            return out
        finally:
            backend.close()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()


def run_decode(args: argparse.Namespace) -> dict:
    from .common import random_checkpoint  # noqa: PLC0415
    from .machine import checkpoint_info  # noqa: PLC0415

    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise InputError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    grid = DRY_GRID if args.dry_run else GPU_GRID
    checkpoint = random_checkpoint(args.preset)
    started = time.monotonic()
    deadline = started + args.budget_s
    part = {"benchmark": "decode", "preset": args.preset, "device": args.device, "precision": PRECISION,
            "dry_run": args.dry_run, "grid": asdict(grid), "budget_s": args.budget_s,
            "checkpoint": checkpoint_info(checkpoint), "variants": {}, "rows": []}
    path = args.out / f"{DECODE_PART_PREFIX}{args.preset}-{'_'.join(names)}.json"

    def emit(row: dict) -> None:
        part["rows"].append(row)
        write_json(path, part)

    for i, name in enumerate(names):
        # each variant gets an equal share of what is left, so a slow one cannot starve the rest
        share = (deadline - time.monotonic()) / (len(names) - i)
        try:
            result = run_variant(VARIANTS[name], checkpoint, args.preset, args.device, grid,
                                 min(deadline, time.monotonic() + share), args.dry_run, emit)
        except Exception as exc:  # noqa: BLE001 - one failing variant must not hide the others
            log.warning("%s %s failed: %s", args.preset, name, exc, exc_info=exc)
            result = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}
        part["variants"][name] = {"kernels": VARIANTS[name].kernels, "options": VARIANTS[name].options, **result}
        write_json(path, part)
    part["seconds"] = time.monotonic() - started
    write_json(path, part)
    print(decode_table(part["rows"]))
    for name, v in part["variants"].items():
        if "skipped" in v:
            print(f"skipped {name}: {v['skipped']}{'; ' + v['check'] if 'check' in v else ''}")
        if "error" in v:
            print(f"FAILED {name}: {v['error']}")
    print(f"wrote {path}")
    return part


# ----------------------------------------------------------------------------- merge
def add_fractions(rows: list[dict], measured: float | None, datasheet: float | None) -> None:
    for r in rows:
        tflops = r.get("achieved_tflops")
        r["fraction_of_measured_peak"] = tflops / measured if tflops and measured else None
        r["fraction_of_datasheet_peak"] = tflops / datasheet if tflops and datasheet else None


def best_rows(rows: list[dict]) -> list[dict]:
    """The fastest row per (preset, variant, steps), with its throughput ratio to eager's best."""
    best: dict[tuple, dict] = {}
    for r in rows:
        key = (r["preset"], r["variant"], r["steps"])
        if key not in best or r["images_per_s"] > best[key]["images_per_s"]:
            best[key] = r
    out = []
    for (preset, _variant, steps), r in sorted(best.items()):
        base = best.get((preset, BASELINE_VARIANT, steps))
        out.append({**r, "ratio_vs_eager": r["images_per_s"] / base["images_per_s"] if base else None})
    return out


def anchor_fractions(anchors: dict, measured: float | None) -> None:
    for r in anchors.get("rows", []):
        gflops = r.get("gflops_per_image")
        r["fraction_of_measured_peak"] = (gflops * 1e9 * r["images_per_s"] / TERA / measured
                                          if gflops and measured else None)


def merge(parts: Path, dry_run: bool) -> dict:
    from .machine import describe_machine  # noqa: PLC0415

    def load(name: str) -> dict | None:
        path = parts / name
        return read_json(path) if path.is_file() else None

    peak = load(PEAK_PART)
    measured = (peak or {}).get("measured_tflops")
    datasheet = (peak or {}).get("datasheet_tflops")
    decode = [read_json(p) for p in sorted(parts.glob(f"{DECODE_PART_PREFIX}*.json"))]
    rows = [r for d in decode for r in d["rows"]]
    add_fractions(rows, measured, datasheet)
    anchors = next((read_json(p) for p in sorted(parts.glob(f"{ANCHORS_PART_PREFIX}*.json"))), None)
    if anchors:
        anchor_fractions(anchors, measured)
    steps = load(STEPS_PART) or {}
    return {
        "benchmark": "gpu-suite",
        "dry_run": dry_run,
        "machine": describe_machine(),
        "steps": steps,
        "failed": [k for k, v in steps.items() if v.get("exit") != 0],
        "peak": peak,
        "decode": {
            "rows": rows,
            "best": best_rows(rows),
            "variants": {f"{d['preset']}/{n}": v for d in decode for n, v in d["variants"].items()},
            "parts": [{k: d[k] for k in ("preset", "grid", "budget_s", "checkpoint", "dry_run")} for d in decode],
        },
        "kernels": load(KERNELS_PART),
        "anchors": anchors,
    }


def decode_table(rows: list[dict]) -> str:
    headers = ["preset", "variant", "batch", "steps", "p50 ms", "img/s", "TFLOP/s", "% measured peak", "x eager"]
    body = [[r["preset"], r["variant"], str(r["batch"]), str(r["steps"]), fmt(r["latency"]["p50_ms"], ".1f"),
             fmt(r["images_per_s"], ".1f"), fmt(r["achieved_tflops"], ".1f"),
             fmt(None if r.get("fraction_of_measured_peak") is None else 100 * r["fraction_of_measured_peak"], ".1f"),
             fmt(r.get("ratio_vs_eager"), ".2f")] for r in rows]
    return format_table(headers, body)


def summary_text(report: dict) -> str:
    peak = report.get("peak") or {}
    lines = [
        f"measured bf16 matmul peak: {fmt(peak.get('measured_tflops'), '.1f')} TFLOP/s "
        f"(datasheet {fmt(peak.get('datasheet_tflops'), '.1f')}) on {peak.get('gpu') or report['machine']['summary']}",
        "best decode per preset, variant and steps:",
        decode_table(report["decode"]["best"]),
    ]
    for name, v in report["decode"]["variants"].items():
        if "skipped" in v:
            lines.append(f"skipped {name}: {v['skipped']}{'; ' + v['check'] if 'check' in v else ''}")
        if v.get("cut"):
            lines.append(f"{name}: {len(v['cut'])} case(s) cut by the time budget")
    kern = report.get("kernels") or {}
    for k, d in (kern.get("per_pass") or {}).items():
        lines.append(f"kernel {k}: Triton {fmt(d['triton_ms'], '.3f')} ms vs {d['eager']} "
                     f"{fmt(d['eager_ms'], '.3f')} ms per U-Net pass ({fmt(d['speedup_vs_eager'], '.2f')}x)")
    for r in (report.get("anchors") or {}).get("rows", []):
        lines.append(f"anchor {r['label']}: {fmt(r['images_per_s'], '.1f')} img/s")
    if report["failed"]:
        lines.append(f"FAILED steps: {', '.join(report['failed'])}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_suite", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    for name, text in (("peak", "measured bf16 matmul peak"), ("decode", "decode img/s of one preset per variant"),
                       ("merge", "merge the parts into one gpu-suite.json")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (CI)")
        p.add_argument("--device", default=None, help="cuda (default) | cpu (the dry run's)")
        if name == "merge":
            p.add_argument("--parts", type=Path, required=True, help="folder of the steps' parts")
            p.add_argument("--out", type=Path, required=True, help=f"folder for {RESULT_NAME}")
        else:
            p.add_argument("--out", type=Path, required=True, help="folder for this step's part")
        if name == "decode":
            p.add_argument("--preset", required=True)
            p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated of {', '.join(VARIANTS)}")
            p.add_argument("--budget-s", type=float, required=True,
                           help="no case starts after this many seconds (the shell's hard limit is a bit longer)")
    args = parser.parse_args(argv)
    args.device = args.device or ("cpu" if args.dry_run else "cuda")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device}: no CUDA device visible; use --dry-run on a CPU machine", file=sys.stderr)
        return 2
    try:
        if args.step == "peak":
            peak = measure_peak(args.device, **(PEAK_DRY if args.dry_run else PEAK_GPU))
            print(f"bf16 matmul {peak['size']}^3: {peak['measured_tflops']:.2f} TFLOP/s measured, datasheet "
                  f"{fmt(peak['datasheet_tflops'], '.1f')}")
            print(f"wrote {write_json(args.out / PEAK_PART, peak)}")
            return 0
        if args.step == "decode":
            part = run_decode(args)
            variants = part["variants"].values()
            failed = any("error" in v for v in variants)
            return 0 if not failed and (part["rows"] or all("skipped" in v for v in variants)) else 1
        report = merge(args.parts, args.dry_run)
        path = write_json(args.out / RESULT_NAME, report)
        print(summary_text(report))
        print(f"wrote {path}")
        return 0 if not report["failed"] else 1
    except DGAEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
