"""GPU suite for the Triton kernels: parity on the device, then timings against what the model
runs without them (the "eager" path: ``scaled_dot_product_attention`` for attention - the explicit
einsum reference is only the parity oracle, never timed -, the PyTorch GroupNorm + AdaGN + SiLU
reference, the PyTorch sampler update).

Shapes are the model's own: the decoder of each preset is traced once on the meta device (no
memory, no compute) and every GroupNorm and attention call it makes at ``--size`` is recorded with
how often one U-Net pass makes it, so the table also gives the per-pass time of each kernel
family; the sampler step runs on the decoder input ``[B, 3 + c, size, size]``.

    python -m benchmarks.gpu_kernels --out results/           # on a CUDA host: f8c4-B and f16c16-B at 256
    python -m benchmarks.gpu_kernels --out /tmp/x --dry-run   # CPU interpreter: the tiny preset at 32 px

Prints a table (median ms via ``triton.testing.do_bench``, speed-ups, GB/s or TFLOP/s) and writes
``gpu_kernels.json`` naming the GPU. Exit status 1 if any parity check fails.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from dgae.config import IMAGE_CHANNELS

from .report import fmt, format_table, write_json

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRESETS = ("f8c4-B", "f16c16-B")
SIZE, BATCH, DTYPE = 256, 8, "bf16"       # the suite's decode size, a batch that fills the GPU, the model's dtype
DRY_PRESETS, DRY_SIZE, DRY_BATCH = ("tiny",), 32, 1
SAMPLER_DT = 0.05
BENCH_WARMUP_MS, BENCH_REP_MS = 25, 200
DRY_REPEATS = 1
TERA, GIGA = 1e12, 1e9
EAGER = {"attention": "sdpa", "group_norm": "group_norm_silu_reference", "sampler_step": "euler_step_reference"}


@dataclass(frozen=True)
class KernelShape:
    """One distinct kernel call of a U-Net pass: ``calls`` = how many times a pass makes it."""

    kernel: str                           # "attention" | "group_norm" | "sampler_step"
    shape: tuple                          # attention (B, H, N, D); group_norm x's shape; sampler_step buf's
    groups: int = 0                       # group_norm only: the module's groups and eps
    eps: float = 0.0
    adagn: bool = False                   # group_norm: scale/shift given
    silu: bool = False                    # group_norm: SiLU fused
    calls: int = 1


@dataclass
class Case:
    """One benchmark row: the Triton callable, the eager callable the model runs without it, work counts."""

    kernel: str
    label: str
    shape: tuple
    calls: int
    triton_fn: Callable[[], object]
    eager_fn: Callable[[], object]
    flops: float = 0.0
    bytes: float = 0.0


@dataclass
class Row:
    kernel: str
    label: str
    shape: list
    dtype: str
    calls_per_pass: int
    triton_ms: float
    eager_ms: float
    eager: str                            # what "eager" ran (EAGER)
    speedup_vs_eager: float
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
def model_shapes(preset: str, size: int, batch: int) -> list[KernelShape]:
    """Every distinct GroupNorm / attention call of one decoder pass at ``size`` (traced on the
    meta device with the PyTorch references) and the sampler step on the decoder input."""
    import kernels  # noqa: PLC0415
    from dgae.decoder import Decoder  # noqa: PLC0415
    from dgae.layers import AttnBlock, GroupNorm  # noqa: PLC0415
    from dgae.presets import get_preset  # noqa: PLC0415

    config = get_preset(preset)
    seen: Counter = Counter()

    def norm_hook(module, args, kwargs):
        scale = kwargs.get("scale", args[1] if len(args) > 1 else None)
        silu = bool(kwargs.get("silu", args[3] if len(args) > 3 else False))
        seen[KernelShape("group_norm", tuple(args[0].shape), module.num_groups, module.eps, scale is not None,
                         silu)] += 1

    def attn_hook(module, args):
        b, c, h, w = args[0].shape
        seen[KernelShape("attention", (b, module.heads, h * w, c // module.heads))] += 1

    with torch.device("meta"):
        decoder = Decoder(config)
        buf = torch.empty(batch, IMAGE_CHANNELS + config.latent_channels, size, size)
        t = torch.empty(batch)
    for m in decoder.modules():
        if isinstance(m, GroupNorm):
            m.register_forward_pre_hook(norm_hook, with_kwargs=True)
        elif isinstance(m, AttnBlock):
            m.register_forward_pre_hook(attn_hook)
    with torch.no_grad(), kernels.use_kernels("reference"):
        decoder.forward_buffer(buf, t)
    shapes = [KernelShape(**{**asdict(k), "calls": n}) for k, n in seen.items()]
    return shapes + [KernelShape("sampler_step", tuple(buf.shape))]


def suite_shapes(presets: tuple[str, ...], size: int, batch: int) -> list[KernelShape]:
    """The union over presets (their decoders share most shapes; each counted once per pass)."""
    out: dict[tuple, KernelShape] = {}
    for preset in presets:
        for k in model_shapes(preset, size, batch):
            out.setdefault((k.kernel, k.shape, k.groups, k.eps, k.adagn, k.silu), k)
    return list(out.values())


# ----------------------------------------------------------------------------- inputs
def _norm_inputs(k: KernelShape, dtype, device, gen):
    c, b = k.shape[1], k.shape[0]
    x = torch.randn(k.shape, generator=gen, device=device).to(dtype)
    weight = torch.randn(c, generator=gen, device=device) * 0.5 + 1.0
    bias = torch.randn(c, generator=gen, device=device) * 0.1
    scale, shift = (torch.randn(b, 2 * c, generator=gen, device=device) * 0.5).chunk(2, dim=1)
    return (x, weight, bias, scale, shift) if k.adagn else (x, weight, bias, None, None)


def _step_inputs(shape, dtype, device, gen):
    b, _, h, w = shape
    buf = torch.randn(shape, generator=gen, device=device).to(dtype)
    v = torch.randn(b, IMAGE_CHANNELS, h, w, generator=gen, device=device).to(dtype)
    v_prev = torch.randn(b, IMAGE_CHANNELS, h, w, generator=gen, device=device).to(dtype)
    return buf, v, v_prev


# ----------------------------------------------------------------------------- parity
def run_parity(device, shapes: list[KernelShape], seed: int) -> list[ParityResult]:
    """Every shape in every dtype against the fp32-math references (outputs poisoned with NaN first)."""
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
        for k in shapes:
            if k.kernel == "attention":
                q, kk, v = (torch.randn(k.shape, generator=gen, device=device).to(dtype) for _ in range(3))
                out = torch.full_like(q, float("nan"))
                flash_attention_triton(q, kk, v, out=out)
                err = max_rel_err(out, flash_attention_reference(q, kk, v))
            elif k.kernel == "group_norm":
                x, w, b, sc, sh = _norm_inputs(k, dtype, device, gen)
                out = torch.full_like(x, float("nan"))
                group_norm_silu_triton(x, w, b, k.groups, k.eps, sc, sh, k.silu, out=out)
                err = max_rel_err(out, group_norm_silu_reference(x, w, b, k.groups, k.eps, sc, sh, k.silu))
            else:
                buf, v, v_prev = _step_inputs(k.shape, dtype, device, gen)
                ref = euler_step_reference(buf.clone(), v, SAMPLER_DT, True, v_prev)
                latents = buf[:, IMAGE_CHANNELS:].clone()
                euler_step_triton(buf, v, SAMPLER_DT, True, v_prev)
                err = max_rel_err(buf[:, :IMAGE_CHANNELS], ref[:, :IMAGE_CHANNELS])
                if not torch.equal(buf[:, IMAGE_CHANNELS:], latents):
                    err = float("inf")
            results.append(ParityResult(k.kernel, list(k.shape), name, err, tolerance(k.kernel, dtype)))
    return results


# ----------------------------------------------------------------------------- timing
def build_cases(device, shapes: list[KernelShape], dtype, seed: int) -> list[Case]:
    from kernels._attention_triton import flash_attention_triton
    from kernels._group_norm_triton import group_norm_silu_triton
    from kernels._sampler_step_triton import euler_step_triton
    from kernels.attention import sdpa_attention
    from kernels.group_norm import group_norm_silu_reference
    from kernels.sampler_step import euler_step_reference

    gen = torch.Generator(device=device).manual_seed(seed)
    elem = torch.empty((), dtype=dtype).element_size()
    cases = []
    for k in shapes:
        if k.kernel == "attention":
            q, kk, v = (torch.randn(k.shape, generator=gen, device=device).to(dtype) for _ in range(3))
            b, h, n, d = k.shape
            cases.append(Case("attention", f"attn N={n} heads={h}", k.shape, k.calls,
                              lambda q=q, k=kk, v=v: flash_attention_triton(q, k, v),
                              lambda q=q, k=kk, v=v: sdpa_attention(q, k, v),
                              flops=4.0 * b * h * n * n * d))
        elif k.kernel == "group_norm":
            x, w, bias, sc, sh = _norm_inputs(k, dtype, device, gen)
            label = f"gn C={k.shape[1]} {'x'.join(map(str, k.shape[2:]))}{' adagn' if k.adagn else ''}" \
                    f"{' silu' if k.silu else ''}"
            cases.append(Case("group_norm", label, k.shape, k.calls,
                              lambda x=x, w=w, b=bias, sc=sc, sh=sh, k=k:
                                  group_norm_silu_triton(x, w, b, k.groups, k.eps, sc, sh, k.silu),
                              lambda x=x, w=w, b=bias, sc=sc, sh=sh, k=k:
                                  group_norm_silu_reference(x, w, b, k.groups, k.eps, sc, sh, k.silu),
                              bytes=2.0 * x.numel() * elem))               # read x + write y (minimum)
        else:
            buf, v, v_prev = _step_inputs(k.shape, dtype, device, gen)
            image_numel = k.shape[0] * IMAGE_CHANNELS * k.shape[2] * k.shape[3]
            cases.append(Case("sampler_step", "euler", k.shape, k.calls,
                              lambda buf=buf, v=v: euler_step_triton(buf, v, SAMPLER_DT),
                              lambda buf=buf, v=v: euler_step_reference(buf, v, SAMPLER_DT),
                              bytes=3.0 * image_numel * elem))             # read x, v; write x
            cases.append(Case("sampler_step", "heun corrector", k.shape, k.calls,
                              lambda buf=buf, v=v, vp=v_prev: euler_step_triton(buf, v, SAMPLER_DT, False, vp),
                              lambda buf=buf, v=v, vp=v_prev: euler_step_reference(buf, v, SAMPLER_DT, False, vp),
                              bytes=4.0 * image_numel * elem))             # read x, v, v_prev; write x
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
        t_ms, eager_ms = timer(case.triton_fn), timer(case.eager_fn)
        secs = t_ms / 1e3
        rows.append(Row(case.kernel, case.label, list(case.shape), dtype_name, case.calls, t_ms, eager_ms,
                        EAGER[case.kernel], eager_ms / t_ms,
                        tflops=case.flops / secs / TERA if case.flops else None,
                        gbps=case.bytes / secs / GIGA if case.bytes else None))
    return rows


def per_pass(rows: list[Row]) -> dict[str, dict]:
    """Per kernel family: ms one U-Net pass spends in it (sum of calls x median), Triton vs eager.
    The sampler step counts once (Euler) per denoiser pass."""
    out: dict[str, dict] = {}
    for r in rows:
        if r.label == "heun corrector":
            continue
        d = out.setdefault(r.kernel, {"triton_ms": 0.0, "eager_ms": 0.0, "eager": r.eager})
        d["triton_ms"] += r.calls_per_pass * r.triton_ms
        d["eager_ms"] += r.calls_per_pass * r.eager_ms
    for d in out.values():
        d["speedup_vs_eager"] = d["eager_ms"] / d["triton_ms"] if d["triton_ms"] else None
    return out


# ----------------------------------------------------------------------------- output
def timing_table(rows: list[Row]) -> str:
    headers = ["case", "shape", "calls/pass", "triton ms", "eager ms", "eager is", "x eager", "TFLOP/s", "GB/s"]
    return format_table(headers, [
        [r.label, "x".join(map(str, r.shape)), str(r.calls_per_pass), fmt(r.triton_ms, ".4f"), fmt(r.eager_ms, ".4f"),
         r.eager, fmt(r.speedup_vs_eager, ".2f"), fmt(r.tflops, ".2f"), fmt(r.gbps, ".1f")] for r in rows])


def per_pass_table(summary: dict[str, dict]) -> str:
    return format_table(["kernel", "triton ms/pass", "eager ms/pass", "eager is", "x eager"], [
        [k, fmt(d["triton_ms"], ".3f"), fmt(d["eager_ms"], ".3f"), d["eager"], fmt(d["speedup_vs_eager"], ".2f")]
        for k, d in summary.items()])


def parity_table(results: list[ParityResult]) -> str:
    return format_table(["kernel", "shape", "dtype", "max rel err", "tol", "ok"], [
        [p.kernel, "x".join(map(str, p.shape)), p.dtype, fmt(p.max_rel_err, ".2e"),
         fmt(p.tolerance, ".1e"), "yes" if p.ok else "NO"] for p in results])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_kernels.json")
    parser.add_argument("--dry-run", action="store_true",
                        help=f"1-2 repeats; runs on CPU under TRITON_INTERPRET=1; defaults to preset "
                             f"{','.join(DRY_PRESETS)} at {DRY_SIZE} px, batch {DRY_BATCH}")
    parser.add_argument("--presets", default=None, help=f"comma-separated presets whose decoder shapes are timed "
                                                        f"(default {','.join(PRESETS)})")
    parser.add_argument("--size", type=int, default=None, help=f"image side (default {SIZE})")
    parser.add_argument("--batch", type=int, default=None, help=f"batch size of the timed shapes (default {BATCH})")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=DTYPE, help="dtype of the timings")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.presets = tuple(p.strip() for p in args.presets.split(",") if p.strip()) if args.presets else (
        DRY_PRESETS if args.dry_run else PRESETS)
    args.size = args.size or (DRY_SIZE if args.dry_run else SIZE)
    args.batch = args.batch if args.batch is not None else (DRY_BATCH if args.dry_run else BATCH)
    if args.batch <= 0 or args.size <= 0:
        parser.error("--batch and --size must be positive")
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
    shapes = suite_shapes(args.presets, args.size, args.batch)

    parity = run_parity(device, shapes, args.seed)
    print(f"# parity on {gpu}\n{parity_table(parity)}\n")
    timer = make_timer(use_cuda, args.dry_run)
    rows = time_cases(build_cases(device, shapes, DTYPES[args.dtype], args.seed), timer, args.dtype)
    summary = per_pass(rows)
    print(f"# timings on {gpu}, {args.dtype}, median ms; presets {','.join(args.presets)} at {args.size} px, "
          f"batch {args.batch}\n{timing_table(rows)}\n\n# per U-Net pass\n{per_pass_table(summary)}")

    import triton

    report = {
        "benchmark": "gpu_kernels", "gpu": gpu, "dry_run": args.dry_run, "presets": list(args.presets),
        "size": args.size, "batch": args.batch, "dtype": args.dtype, "torch": torch.__version__,
        "triton": triton.__version__, "eager": EAGER, "parity": [asdict(p) for p in parity],
        "timings": [asdict(r) for r in rows], "per_pass": summary,
    }
    path = write_json(args.out / "gpu_kernels.json", report)
    print(f"wrote {path}")
    return 0 if all(p.ok for p in parity) else 1


if __name__ == "__main__":
    sys.exit(main())
