"""`dgae kernels compile --out DIR`: every Triton kernel launch of the decoders compiled ahead of
time for sm_80 / sm_90 on this machine (no GPU needed); see :mod:`benchmarks.kernel_compile`."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from dgae.errors import InputError

INTERPRET_ENV = "TRITON_INTERPRET"


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kernels_command", metavar="ACTION", required=True)
    p = sub.add_parser("compile", help="compile every jit kernel launch of the decoders for sm_80 / sm_90")
    p.add_argument("--out", type=Path, required=True, help="folder for kernels-compile.json")
    p.add_argument("--presets", type=_csv, default=None, help="comma-separated presets "
                                                             "(default f8c4-B,f16c16-B,small-f8c4)")
    p.add_argument("--sizes", type=_csv, default=None, help="image sides (default 256,1024)")
    p.add_argument("--archs", type=_csv, default=None, help="compute capabilities, e.g. 80,90 (default)")
    p.add_argument("--dtypes", type=_csv, default=None, help="model dtypes (default fp32,fp16,bf16)")
    p.add_argument("--kernels", type=_csv, default=None,
                   help="subset of attention,group_norm,sampler_step (default all)")


def run(args: argparse.Namespace) -> int:
    if os.environ.get(INTERPRET_ENV, "0") == "1":
        # Triton reads it when kernels are decorated: the real compiler needs the real kernels
        raise InputError(f"dgae kernels compile needs {INTERPRET_ENV} unset or 0 (it compiles, not interprets)")
    from benchmarks import kernel_compile as kc  # noqa: PLC0415

    try:
        sizes = tuple(int(s) for s in args.sizes) if args.sizes else kc.SIZES
        archs = tuple(int(a) for a in args.archs) if args.archs else kc.ARCHS
    except ValueError as exc:
        raise InputError(f"--sizes / --archs take integers: {exc}") from exc
    dtypes = args.dtypes or tuple(kc.DTYPES)
    kernel_names = args.kernels or kc.KERNELS
    for name, given, known in (("--dtypes", dtypes, kc.DTYPES), ("--kernels", kernel_names, kc.KERNELS)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise InputError(f"{name}: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    from kernels.aot import MAX_SHARED_BYTES  # noqa: PLC0415

    bad_arch = sorted(set(archs) - set(MAX_SHARED_BYTES))
    if bad_arch:
        raise InputError(f"--archs: unknown {bad_arch}; known: {', '.join(map(str, MAX_SHARED_BYTES))}")
    return kc.run(args.out, args.presets or kc.PRESETS, sizes, archs, dtypes, kernel_names)
