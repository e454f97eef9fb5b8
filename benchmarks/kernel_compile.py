"""``dgae kernels compile``: every Triton kernel launch the decoders make, compiled ahead of time for
sm_80 (A100) and sm_90 (H100 / H200) on a machine without a GPU, with registers, spills and shared
memory per launch configuration.

The launches are the decoders' own: each preset's sampled decode (the sampler's Euler / Heun
updates around the U-Net passes) is traced on the meta device (no memory, no compute) under
:func:`kernels.record_gpu_launches`, which records the launch a GPU would make for every kernel
call - the same argument code the Triton wrappers run, so strides (attention reads q/k/v as views of
the qkv convolution), alignment and flags are the real ones - in the model's dtype (fp32 / fp16 /
bf16) with the sampler state in fp32, as the torch runtime keeps it. Launches that Triton would
compile to the same kernel are compiled once; ``used_by`` lists the (preset, size) pairs behind each.

Writes ``kernels-compile.json`` (one record per kernel, arch, dtype and configuration) and prints a
table. Exit status 1 when any configuration fails, spills or would not launch.
"""
from __future__ import annotations

import logging
import platform
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import flops
from .machine import git_commit, machine_summary
from .report import fmt, format_table, write_json

log = logging.getLogger(__name__)

RESULT_NAME = "kernels-compile.json"
PRESETS = ("f8c4-B", "f16c16-B", "small-f8c4")
SIZES = (256, 1024)
ARCHS = (80, 90)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
KERNELS = ("attention", "group_norm", "sampler_step")
TRACE_BATCH = 2                  # strides and flags do not depend on the batch (only the grid does)
TRACE_STEPS = 2                  # 2 steps: every sampler update (Heun predictor, corrector, last clamp)
STATE_DTYPE = torch.float32      # the sampler state's dtype on every runtime (backends.base)
ROOT = Path(__file__).resolve().parent.parent
PIN_EXTRA = "gpu"                # the pyproject extra the GPU image installs triton from


@dataclass
class Record:
    kernel: str
    arch: str
    dtype: str
    config: dict
    ok: bool
    num_regs: int | None
    spills: int | None
    shared_bytes: int | None
    error: str | None
    stack_bytes: int | None = None
    compile_s: float = 0.0
    signature: dict = field(default_factory=dict)
    aligned: list = field(default_factory=list)
    used_by: list = field(default_factory=list)


def trace_launches(preset: str, size: int, dtype: torch.dtype) -> list[tuple[str, object]]:
    """``(kernel, FixedLaunch)`` of one sampled decode of ``preset`` at ``size``² (meta device)."""
    import kernels  # noqa: PLC0415
    from dgae.presets import get_preset  # noqa: PLC0415
    from dgae.sampler import SamplePlan, run_sampler  # noqa: PLC0415

    config = get_preset(preset)
    meta_pass = flops.meta_decoder_pass(config, size, size, TRACE_BATCH, dtype)   # padded like decode
    buf = meta_pass.buf.to(STATE_DTYPE)                                            # the sampler state
    plan = SamplePlan.build(config.sampler, TRACE_STEPS)
    with torch.no_grad(), kernels.record_gpu_launches() as launches:
        run_sampler(lambda b, t: meta_pass.decoder.forward_buffer(b.to(dtype), t), buf, plan)
    return launches


def config_of(launch, result) -> dict:
    """The launch configuration as a record shows it: constexprs, warps/stages, and how Triton
    specialised the runtime arguments (integers fixed at 1; integers/pointers not 16-divisible)."""
    specialized = sorted(result.specialized or {})
    aligned = set(result.aligned or [])
    unaligned = sorted(
        n for n, t in (result.signature or {}).items() if n not in aligned and not t.startswith(("fp", "bf"))
    )
    return {**launch.constexprs, **launch.options, **({"args_equal_1": specialized} if specialized else {}),
            **({"not_16_divisible": unaligned} if unaligned else {})}


def collect(presets, sizes, dtypes, kernel_names) -> dict[tuple[str, str], dict]:
    """{(dtype, specialization key): {"kernel", "launch", "used_by"}} over every traced decode."""
    from kernels.aot import specialization_key  # noqa: PLC0415

    unique: dict[tuple[str, str], dict] = {}
    for dtype_name in dtypes:
        for preset in presets:
            for size in sizes:
                for kernel, launch in trace_launches(preset, size, DTYPES[dtype_name]):
                    if kernel not in kernel_names:
                        continue
                    entry = unique.setdefault((dtype_name, specialization_key(launch)),
                                              {"kernel": kernel, "launch": launch, "used_by": []})
                    if f"{preset}@{size}" not in entry["used_by"]:
                        entry["used_by"].append(f"{preset}@{size}")
    return unique


def compile_all(presets, sizes, archs, dtypes, kernel_names) -> list[Record]:
    from kernels.aot import ARCH_NAMES, compile_launch  # noqa: PLC0415

    records = []
    unique = collect(presets, sizes, dtypes, kernel_names)
    log.info("%d distinct launch configurations x %d archs", len(unique), len(archs))
    for (dtype_name, _), entry in sorted(unique.items(), key=lambda kv: (kv[1]["kernel"], kv[0][0])):
        for arch in archs:
            start = time.perf_counter()
            res = compile_launch(entry["launch"], arch)
            records.append(Record(entry["kernel"], ARCH_NAMES[arch], dtype_name,
                                  config_of(entry["launch"], res), res.ok, res.num_regs,
                                  res.spills, res.shared_bytes, res.error, res.stack_bytes,
                                  time.perf_counter() - start, res.signature or {}, res.aligned or [],
                                  list(entry["used_by"])))
            log.info("%s %s %s: %s", entry["kernel"], ARCH_NAMES[arch], dtype_name, "ok" if res.ok else res.error)
    return records


def pinned_triton(pyproject: Path = ROOT / "pyproject.toml") -> str | None:
    """The exact triton version the GPU extra pins (``triton==X``), None when not pinned."""
    if not pyproject.is_file():
        return None
    deps = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"].get(PIN_EXTRA, [])
    for dep in deps:
        name, _, version = dep.partition("==")
        if name.strip() == "triton" and version:
            return version.strip()
    return None


def _short(config: dict) -> str:
    return " ".join(f"{k}={v}" if not isinstance(v, list) else f"{k}={','.join(v)}" for k, v in config.items())


def table(records: list[Record]) -> str:
    return format_table(["kernel", "arch", "dtype", "config", "ok", "regs", "spills", "smem B", "used by"], [
        [r.kernel, r.arch, r.dtype, _short(r.config), "yes" if r.ok else "NO", fmt(r.num_regs, "d"),
         fmt(r.spills, "d"), fmt(r.shared_bytes, "d"), f"{len(r.used_by)} decodes"] for r in records])


def markdown_table(records: list[dict]) -> str:
    """One row per kernel, dtype and configuration, one column group per arch (docs/gpu.md)."""
    archs = sorted({r["arch"] for r in records})
    rows: dict[tuple, dict] = {}
    for r in records:
        rows.setdefault((r["kernel"], r["dtype"], _short(r["config"]), len(r["used_by"])), {})[r["arch"]] = r
    headers = [
        "kernel",
        "dtype",
        "config",
        "decodes",
        *(f"{a} {c}" for a in archs for c in ("regs", "spills", "smem B")),
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for (kernel, dtype, config, used), by_arch in rows.items():
        cells = []
        for a in archs:
            r = by_arch.get(a)
            cells += (
                ["-"] * 3
                if r is None
                else [
                    fmt(r["num_regs"], "d"),
                    fmt(r["spills"], "d") + ("" if r["ok"] else " FAIL"),
                    fmt(r["shared_bytes"], "d"),
                ]
            )
        lines.append("| " + " | ".join([kernel, dtype, f"`{config}`", str(used), *cells]) + " |")
    return "\n".join(lines)


def run(out: Path, presets=PRESETS, sizes=SIZES, archs=ARCHS, dtypes=tuple(DTYPES), kernel_names=KERNELS) -> int:
    import triton  # noqa: PLC0415

    start = time.perf_counter()
    records = compile_all(presets, sizes, archs, dtypes, kernel_names)
    pin = pinned_triton()
    report = {
        "benchmark": "kernels_compile",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{machine_summary()}, {platform.machine()}", "git": git_commit(),
        "triton": triton.__version__, "triton_pinned": pin, "matches_pin": pin == triton.__version__,
        "torch": torch.__version__, "presets": list(presets), "sizes": list(sizes),
        "archs": [f"sm_{a}" for a in archs], "dtypes": list(dtypes), "kernels": list(kernel_names),
        "configurations": len(records), "failed": sum(not r.ok for r in records),
        "spilling": sum(bool(r.spills) for r in records), "seconds": time.perf_counter() - start,
        "records": [asdict(r) for r in records],
    }
    print(table(records))
    print(f"{len(records)} configurations, {report['failed']} failed, {report['spilling']} spilling; "
          f"triton {triton.__version__} (pinned: {pin}); {report['seconds']:.0f} s")
    if not report["matches_pin"]:
        print(f"warning: triton {triton.__version__} is not the pinned {pin}", file=sys.stderr)
    print(f"wrote {write_json(out / RESULT_NAME, report)}")
    return 0 if report["failed"] == 0 else 1
