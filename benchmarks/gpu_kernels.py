"""GPU suite for the Triton kernels: parity on the device, then timings vs eager PyTorch (and SDPA).

Shapes follow the paper's B decoder preset at 256x256 (ADM U-Net, base 128 channels,
channel_mult (1, 1, 2, 2, 4, 4), 64-dim attention heads at 32x32 / 16x16 / 8x8):
attention ``[B, C/64, 1024|256|64, 64]``, GroupNorm(32) + AdaGN + SiLU on every level's
activation, and the sampler step on the ``[B, 3 + c, 256, 256]`` decoder input.

    python -m benchmarks.gpu_kernels --out results/           # on a CUDA host
    python -m benchmarks.gpu_kernels --out /tmp/x --dry-run   # CPU interpreter, tiny shapes

Prints a table (median ms via ``triton.testing.do_bench``, speed-ups, GB/s or TFLOP/s) and writes
``gpu_kernels.json`` naming the GPU. Exit status 1 if any parity check fails.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NUM_GROUPS = 32
GN_EPS = 1e-5
HEAD_DIM = 64
LATENT_CHANNELS = 4                       # c in the decoder input [B, 3 + c, H, W]
IMAGE_SIZE = 256
SAMPLER_DT = 0.05
# (channels, resolution) of every U-Net level: base 128 x channel_mult (1, 1, 2, 2, 4, 4)
UNET_LEVELS = [(128, 256), (128, 128), (256, 64), (256, 32), (512, 16), (512, 8)]
ATTN_RESOLUTIONS = (32, 16, 8)
# tiny shapes for --dry-run (interpreter): (B, H, N, D), (x shape, groups), buf shape
DRY_ATTN = [(1, 2, 17, 32), (1, 1, 40, 64)]
DRY_NORM = [((1, 48, 5, 7), 16), ((1, 64, 4, 4), 32)]
DRY_STEP = [(1, 3 + LATENT_CHANNELS, 8, 8)]
BENCH_WARMUP_MS, BENCH_REP_MS = 25, 200
DRY_REPEATS = 2
TERA, GIGA = 1e12, 1e9


@dataclass
class Case:
    """One benchmark row: a Triton callable, its eager reference, optional SDPA, work counts."""

    kernel: str                           # "attention" | "group_norm" | "sampler_step"
    label: str
    shape: tuple
    triton_fn: Callable[[], object]
    reference_fn: Callable[[], object]
    sdpa_fn: Callable[[], object] | None = None
    flops: float = 0.0
    bytes: float = 0.0


@dataclass
class Row:
    kernel: str
    label: str
    shape: list
    dtype: str
    triton_ms: float
    reference_ms: float
    speedup_vs_reference: float
    sdpa_ms: float | None = None
    speedup_vs_sdpa: float | None = None
    tflops: float | None = None
    gbps: float | None = None


@dataclass
class ParityResult:
    kernel: str
    shape: list
    dtype: str
    max_rel_err: float
    tolerance: float
    ok: bool = field(init=False)

    def __post_init__(self):
        self.ok = self.max_rel_err <= self.tolerance


# ----------------------------------------------------------------------------- shapes
def attention_shapes(batch: int, dry: bool) -> list[tuple]:
    if dry:
        return DRY_ATTN
    chans = dict((res, ch) for ch, res in UNET_LEVELS)
    return [(batch, chans[res] // HEAD_DIM, res * res, HEAD_DIM) for res in ATTN_RESOLUTIONS]


def norm_shapes(batch: int, dry: bool) -> list[tuple]:
    if dry:
        return DRY_NORM
    return [((batch, ch, res, res), NUM_GROUPS) for ch, res in UNET_LEVELS]


def step_shapes(batch: int, dry: bool) -> list[tuple]:
    return DRY_STEP if dry else [(batch, 3 + LATENT_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)]


# ----------------------------------------------------------------------------- inputs
def _norm_inputs(shape, dtype, device, gen):
    c, b = shape[1], shape[0]
    x = torch.randn(shape, generator=gen, device=device).to(dtype)
    weight = torch.randn(c, generator=gen, device=device) * 0.5 + 1.0
    bias = torch.randn(c, generator=gen, device=device) * 0.1
    scale, shift = (torch.randn(b, 2 * c, generator=gen, device=device) * 0.5).chunk(2, dim=1)
    return x, weight, bias, scale, shift


def _step_inputs(shape, dtype, device, gen):
    b, _, h, w = shape
    buf = torch.randn(shape, generator=gen, device=device).to(dtype)
    v = torch.randn(b, 3, h, w, generator=gen, device=device).to(dtype)
    v_prev = torch.randn(b, 3, h, w, generator=gen, device=device).to(dtype)
    return buf, v, v_prev


# ----------------------------------------------------------------------------- parity
def run_parity(device, batch: int, dry: bool, seed: int) -> list[ParityResult]:
    from kernels._attention_triton import flash_attention_triton
    from kernels._group_norm_triton import group_norm_silu_triton
    from kernels._sampler_step_triton import euler_step_triton
    from kernels.attention import flash_attention_reference
    from kernels.group_norm import group_norm_silu_reference
    from kernels.parity import max_rel_err, tolerance
    from kernels.sampler_step import euler_step_reference

    gen = torch.Generator(device=device).manual_seed(seed)
    results = []
    for name, dtype in DTYPES.items():
        for shape in attention_shapes(batch, dry):
            q, k, v = (torch.randn(shape, generator=gen, device=device).to(dtype) for _ in range(3))
            out = torch.full_like(q, float("nan"))
            flash_attention_triton(q, k, v, out=out)
            err = max_rel_err(out, flash_attention_reference(q, k, v))
            results.append(ParityResult("attention", list(shape), name, err, tolerance("attention", dtype)))
        for shape, groups in norm_shapes(batch, dry):
            x, w, b, sc, sh = _norm_inputs(shape, dtype, device, gen)
            out = torch.full_like(x, float("nan"))
            group_norm_silu_triton(x, w, b, groups, GN_EPS, sc, sh, True, out=out)
            err = max_rel_err(out, group_norm_silu_reference(x, w, b, groups, GN_EPS, sc, sh, True))
            results.append(ParityResult("group_norm", list(shape), name, err, tolerance("group_norm", dtype)))
        for shape in step_shapes(batch, dry):
            buf, v, v_prev = _step_inputs(shape, dtype, device, gen)
            ref = euler_step_reference(buf.clone(), v, SAMPLER_DT, True, v_prev)
            latents = buf[:, 3:].clone()
            euler_step_triton(buf, v, SAMPLER_DT, True, v_prev)
            err = max_rel_err(buf[:, :3], ref[:, :3])
            if not torch.equal(buf[:, 3:], latents):
                err = float("inf")
            results.append(ParityResult("sampler_step", list(shape), name, err,
                                        tolerance("sampler_step", dtype)))
    return results


# ----------------------------------------------------------------------------- timing
def build_cases(device, batch: int, dtype, dry: bool, seed: int) -> list[Case]:
    import torch.nn.functional as F

    from kernels._attention_triton import flash_attention_triton
    from kernels._group_norm_triton import group_norm_silu_triton
    from kernels._sampler_step_triton import euler_step_triton
    from kernels.attention import flash_attention_reference
    from kernels.group_norm import group_norm_silu_reference
    from kernels.sampler_step import euler_step_reference

    gen = torch.Generator(device=device).manual_seed(seed)
    elem = torch.empty((), dtype=dtype).element_size()
    cases = []
    for shape in attention_shapes(batch, dry):
        q, k, v = (torch.randn(shape, generator=gen, device=device).to(dtype) for _ in range(3))
        b, h, n, d = shape
        cases.append(Case(
            "attention", f"attn N={n}", shape,
            lambda q=q, k=k, v=v: flash_attention_triton(q, k, v),
            lambda q=q, k=k, v=v: flash_attention_reference(q, k, v),
            sdpa_fn=lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v),
            flops=4.0 * b * h * n * n * d))
    for shape, groups in norm_shapes(batch, dry):
        x, w, bias, sc, sh = _norm_inputs(shape, dtype, device, gen)
        cases.append(Case(
            "group_norm", f"gn C={shape[1]} {shape[2]}x{shape[3]}", shape,
            lambda x=x, w=w, bias=bias, sc=sc, sh=sh, g=groups:
                group_norm_silu_triton(x, w, bias, g, GN_EPS, sc, sh, True),
            lambda x=x, w=w, bias=bias, sc=sc, sh=sh, g=groups:
                group_norm_silu_reference(x, w, bias, g, GN_EPS, sc, sh, True),
            bytes=2.0 * x.numel() * elem))                       # read x + write y (minimum)
    for shape in step_shapes(batch, dry):
        buf, v, v_prev = _step_inputs(shape, dtype, device, gen)
        image_numel = shape[0] * 3 * shape[2] * shape[3]
        cases.append(Case(
            "sampler_step", "euler", shape,
            lambda buf=buf, v=v: euler_step_triton(buf, v, SAMPLER_DT),
            lambda buf=buf, v=v: euler_step_reference(buf, v, SAMPLER_DT),
            bytes=3.0 * image_numel * elem))                     # read x, v; write x
        cases.append(Case(
            "sampler_step", "heun corrector", shape,
            lambda buf=buf, v=v, vp=v_prev: euler_step_triton(buf, v, SAMPLER_DT, False, vp),
            lambda buf=buf, v=v, vp=v_prev: euler_step_reference(buf, v, SAMPLER_DT, False, vp),
            bytes=4.0 * image_numel * elem))                     # read x, v, v_prev; write x
    return cases


def make_timer(use_cuda: bool, dry: bool) -> Callable[[Callable[[], object]], float]:
    """Median milliseconds of ``fn``: do_bench on CUDA, a few perf_counter runs otherwise."""
    if use_cuda:
        from triton.testing import do_bench

        warmup, rep = (1, 2) if dry else (BENCH_WARMUP_MS, BENCH_REP_MS)
        return lambda fn: float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))

    def cpu_timer(fn):
        fn()                                                     # compile / warm
        times = []
        for _ in range(DRY_REPEATS):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    return cpu_timer


def time_cases(cases: list[Case], timer, dtype_name: str) -> list[Row]:
    rows = []
    for case in cases:
        t_ms, ref_ms = timer(case.triton_fn), timer(case.reference_fn)
        sdpa_ms = timer(case.sdpa_fn) if case.sdpa_fn is not None else None
        secs = t_ms / 1e3
        rows.append(Row(
            case.kernel, case.label, list(case.shape), dtype_name, t_ms, ref_ms, ref_ms / t_ms,
            sdpa_ms=sdpa_ms, speedup_vs_sdpa=None if sdpa_ms is None else sdpa_ms / t_ms,
            tflops=case.flops / secs / TERA if case.flops else None,
            gbps=case.bytes / secs / GIGA if case.bytes else None))
    return rows


# ----------------------------------------------------------------------------- output
def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    body = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in rows]
    return "\n".join([line, "-" * len(line), *body])


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def timing_table(rows: list[Row]) -> str:
    headers = ["case", "shape", "triton ms", "eager ms", "x eager", "sdpa ms", "x sdpa", "TFLOP/s", "GB/s"]
    return format_table(headers, [
        [r.label, "x".join(map(str, r.shape)), _fmt(r.triton_ms, ".4f"), _fmt(r.reference_ms, ".4f"),
         _fmt(r.speedup_vs_reference, ".2f"), _fmt(r.sdpa_ms, ".4f"), _fmt(r.speedup_vs_sdpa, ".2f"),
         _fmt(r.tflops, ".2f"), _fmt(r.gbps, ".1f")] for r in rows])


def parity_table(results: list[ParityResult]) -> str:
    return format_table(["kernel", "shape", "dtype", "max rel err", "tol", "ok"], [
        [p.kernel, "x".join(map(str, p.shape)), p.dtype, _fmt(p.max_rel_err, ".2e"),
         _fmt(p.tolerance, ".1e"), "yes" if p.ok else "NO"] for p in results])


def _finite(obj):
    """JSON has no NaN/inf: map them to null (an infinite parity error also shows as ok=false)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_kernels.json")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny shapes, 1-2 repeats; runs on CPU under TRITON_INTERPRET=1")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the timed shapes")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="dtype of the timings")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.batch <= 0:
        parser.error("--batch must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_cuda = torch.cuda.is_available()
    if not use_cuda:
        if not args.dry_run:
            print("no CUDA device: only --dry-run (Triton interpreter) can run here", file=sys.stderr)
            return 2
        os.environ.setdefault("TRITON_INTERPRET", "1")          # before any triton kernel import
    device = torch.device("cuda" if use_cuda else "cpu")
    gpu = torch.cuda.get_device_name(device) if use_cuda else "cpu (triton interpreter)"

    parity = run_parity(device, args.batch, args.dry_run, args.seed)
    print(f"# parity on {gpu}\n{parity_table(parity)}\n")
    timer = make_timer(use_cuda, args.dry_run)
    rows = time_cases(build_cases(device, args.batch, DTYPES[args.dtype], args.dry_run, args.seed),
                      timer, args.dtype)
    print(f"# timings on {gpu}, {args.dtype}, median ms\n{timing_table(rows)}")

    import triton

    report = {
        "gpu": gpu, "dry_run": args.dry_run, "batch": args.batch, "dtype": args.dtype,
        "torch": torch.__version__, "triton": triton.__version__,
        "parity": [asdict(p) for p in parity], "timings": [asdict(r) for r in rows],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gpu_kernels.json"
    path.write_text(json.dumps(_finite(report), indent=2, allow_nan=False))
    print(f"wrote {path}")
    return 0 if all(p.ok for p in parity) else 1


if __name__ == "__main__":
    sys.exit(main())
