"""`dgae bench backends|load|anchors|sizes|roofline|plots|markdown`: run a benchmark, print its table, write
``<out>/<benchmark>-<cpu|cuda>.json`` (machine, versions, commit, checkpoint sha256 included)
and the matching PNG plot."""
from __future__ import annotations

import argparse
import logging
import resource
import time
from pathlib import Path

from dgae.errors import InputError

from benchmarks.common import (DEFAULT_OUT, add_common_arguments, apply_threads, int_list, resolve_bench_checkpoint,
                     resolve_device, results_name)

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)

    p = sub.add_parser("backends", help="in-process encode/decode throughput per backend")
    add_common_arguments(p)
    p.add_argument("--backends", default=None,
                   help="comma-separated subset (torch-eager-fp32 is always added as the baseline)")
    p.add_argument("--sizes", type=int_list, default=None, help="image sides, e.g. 256,512")
    p.add_argument("--batches", type=int_list, default=None, help="batch sizes, e.g. 1,8,32")
    p.add_argument("--steps", type=int_list, default=None, help="decode steps, e.g. 1,2,4,8")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per case")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per case")
    add_clock_argument(p)
    p.add_argument("--budget-s", type=float, default=None,
                   help="per-backend time budget; cases not started in time are listed as cut")
    p.add_argument("--total-budget-s", type=float, default=None,
                   help="time budget of the whole run; backends not started in time are listed as skipped")
    p.add_argument("--onnx-dir", default=None, help="ONNX export for the onnxruntime rows (default: export "
                                                    "the checkpoint once into the cache)")
    p.add_argument("--engine-dir", default=None, help="TensorRT engines for the tensorrt row (dgae export tensorrt)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="override the GPU's dense bf16 peak (TFLOP/s) used for the ceiling fraction")

    p = sub.add_parser("load", help="HTTP load: concurrency sweep against the service")
    add_common_arguments(p)
    from benchmarks import load  # noqa: PLC0415 - only argparse wiring; load imports no server code at import

    load.add_arguments(p)

    p = sub.add_parser("anchors", help="decode cost vs one-pass VAE decoders (SD-VAE, TAESD)")
    add_common_arguments(p)
    p.add_argument("--size", type=int, default=None, help="image side (default 256; --quick 128)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 8; --quick 2)")
    p.add_argument("--steps", type=int_list, default=None, help="DGAE step counts (default 1,2,4,8)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per row")
    p.add_argument("--backend", default="auto", help="DGAE backend (default auto: what a user gets by default)")
    p.add_argument("--http", action="store_true",
                   help="also time POST /decode of a started `dgae serve` at its defaults, in the same run")
    add_clock_argument(p)

    p = sub.add_parser("sizes", help="encode/decode cost per megapixel and peak RSS vs image size, tiled and untiled")
    add_common_arguments(p)
    p.add_argument("--sizes", type=int_list, default=None, help="image sides (default 256,512,1024,2048; --quick "
                                                                "64,128,256)")
    p.add_argument("--steps", type=int, default=None, help="decode steps (default 1)")
    p.add_argument("--untiled-max", type=int, default=None, help="largest side also run untiled (default 1024)")
    p.add_argument("--ops", default="encode,decode", help="operations to time (default encode,decode)")
    p.add_argument("--backend", default="torch", help="backend name for backends.factory (default torch)")
    add_clock_argument(p)

    p = sub.add_parser("roofline", help="predicted decode img/s on H100 / H200 from counted FLOPs and bytes "
                                        "(no GPU needed)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for roofline.json and roofline.md")
    p.add_argument("--presets", default=None, help="comma-separated presets (default f8c4-B,f16c16-B,small-f8c4)")
    p.add_argument("--sizes", type=int_list, default=None, help="image sides (default 256,1024)")
    p.add_argument("--steps", type=int_list, default=None, help="decode steps (default 1,2,4)")
    p.add_argument(
        "--batch", type=int, default=None, help="batch of every row (default: 2 megapixels, 32 at 256, 2 at 1024)"
    )

    p = sub.add_parser("plots", help="re-draw the PNG plots from the results JSON in a folder")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")

    p = sub.add_parser("markdown", help="print Markdown tables of the results JSON in a folder (README)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")


def add_clock_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed time; cpu: this process's CPU time (CPU device only; with --threads 1 "
                        "the cost on a dedicated core, robust to other load on a shared machine)")


def check_clock(args: argparse.Namespace, device: str) -> None:
    if getattr(args, "clock", "wall") == "cpu" and device.startswith("cuda"):
        raise InputError("--clock cpu measures CPU work only; use --clock wall on CUDA")


def run(args: argparse.Namespace) -> int:
    if args.bench == "plots":
        from benchmarks.plots import plot_folder  # noqa: PLC0415

        written = plot_folder(args.out)
        print("\n".join(str(p) for p in written) or f"no results JSON in {args.out}")
        return 0
    if args.bench == "markdown":
        from benchmarks.markdown import render_folder  # noqa: PLC0415

        print(render_folder(args.out) or f"no results JSON in {args.out}")
        return 0
    if args.bench == "roofline":
        return run_roofline(args)
    device = resolve_device(args.device)
    check_clock(args, device)
    apply_threads(args.threads)
    checkpoint = resolve_bench_checkpoint(args)
    wall, cpu = time.monotonic(), _cpu_seconds()
    runners = {"backends": run_backends, "load": run_load, "anchors": run_anchors, "sizes": run_sizes}
    report = runners[args.bench](args, checkpoint, device)
    # CPU seconds (this process + finished children such as the services) next to wall time: on a
    # shared machine wall time includes waiting for the CPU, CPU time does not
    report["run"] = {"wall_s": time.monotonic() - wall, "cpu_s": _cpu_seconds() - cpu, "threads": args.threads}
    return finish(args, report, device)


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def finish(args: argparse.Namespace, report: dict, device: str) -> int:
    from benchmarks.machine import describe_machine  # noqa: PLC0415
    from benchmarks.report import write_json  # noqa: PLC0415

    report["machine"] = describe_machine(report.pop("checkpoint_path", None))
    name = results_name(report["benchmark"], device)
    path = write_json(args.out / f"{name}.json", report)
    print(f"machine: {report['machine']['summary']}; {report['run']['wall_s']:.0f} s wall, "
          f"{report['run']['cpu_s']:.0f} s CPU")
    print(f"wrote {path}")
    if not args.no_plot:
        from benchmarks.plots import plot_report  # noqa: PLC0415

        print(f"wrote {plot_report(report, args.out / f'{name}.png')}")
    return 0 if not report.get("failed") else 1


# ----------------------------------------------------------------------------- backends
def _grid(args: argparse.Namespace, device: str):
    from dataclasses import replace  # noqa: PLC0415

    from benchmarks import throughput  # noqa: PLC0415

    if args.quick:
        grid = throughput.QUICK_GRID
    else:
        grid = throughput.FULL_GPU_GRID if device.startswith("cuda") else throughput.FULL_CPU_GRID
    changes = {k: v for k, v in (("sizes", args.sizes), ("batches", args.batches), ("steps", args.steps))
               if v is not None}
    if args.warmup is not None:
        if args.warmup < 0:
            raise InputError("--warmup must be >= 0")
        changes["warmup"] = args.warmup
    if args.repeats is not None:
        if args.repeats < 1:
            raise InputError("--repeats must be >= 1")
        changes["repeats"] = args.repeats
    return replace(grid, **changes)


def run_backends(args: argparse.Namespace, checkpoint: Path, device: str) -> dict:
    from benchmarks import flops, throughput  # noqa: PLC0415
    from benchmarks.machine import gpu_info  # noqa: PLC0415

    peak = args.peak_tflops
    if peak is None and device.startswith("cuda"):
        peak = flops.bf16_peak_tflops((gpu_info() or {}).get("name"))
    names = [n.strip() for n in args.backends.split(",") if n.strip()] if args.backends else None
    runtime = {"onnxruntime": {**({"onnx_dir": args.onnx_dir} if args.onnx_dir else {}),
                               **({"threads": args.threads} if args.threads else {})},
               "tensorrt": {"engine_dir": args.engine_dir} if args.engine_dir else {}}
    report = throughput.run(checkpoint, device, _grid(args, device), args.quick, names, args.budget_s, peak,
                            runtime, args.total_budget_s, args.clock)
    print(throughput.results_table(report))
    for line in throughput.skipped_lines(report):
        print(line)
    print(throughput.summary_text(report))
    report["summary"] = {"decode_ratios_at_batch": throughput.ratio_summary(report)}
    report["failed"] = any("error" in b for b in report["backends"].values())
    report["checkpoint_path"] = str(checkpoint)
    return report


# ----------------------------------------------------------------------------- load / anchors
def run_load(args: argparse.Namespace, checkpoint: Path, device: str) -> dict:
    from benchmarks import load  # noqa: PLC0415

    report = load.run_from_args(args, checkpoint, device)
    print(load.results_table(report))
    print(load.summary_text(report))
    report["checkpoint_path"] = str(checkpoint)
    return report


def run_anchors(args: argparse.Namespace, checkpoint: Path, device: str) -> dict:
    from benchmarks import anchors  # noqa: PLC0415

    report = anchors.run_from_args(args, checkpoint, device)
    print(anchors.results_table(report))
    report["checkpoint_path"] = str(checkpoint)
    return report


def run_sizes(args: argparse.Namespace, checkpoint: Path, device: str) -> dict:
    from benchmarks import sizes  # noqa: PLC0415

    if device != "cpu":
        raise InputError("dgae bench sizes measures CPU processes (peak RSS); use --device cpu")
    chosen = args.sizes or (sizes.QUICK_SIZES if args.quick else sizes.DEFAULT_SIZES)
    report = sizes.run(checkpoint, tuple(chosen), args.steps or sizes.DEFAULT_STEPS,
                       args.untiled_max or (max(chosen) if args.quick else sizes.DEFAULT_UNTILED_MAX),
                       args.backend, args.threads, args.clock, tuple(o for o in args.ops.split(",") if o))
    print(sizes.results_table(report))
    report["failed"] = any("error" in r for r in report["rows"])
    report["checkpoint_path"] = str(checkpoint)
    return report


# ----------------------------------------------------------------------------- roofline
def run_roofline(args: argparse.Namespace) -> int:
    from benchmarks import roofline  # noqa: PLC0415
    from benchmarks.report import write_json  # noqa: PLC0415

    if args.batch is not None and args.batch < 1:
        raise InputError("--batch must be >= 1")
    presets = tuple(p.strip() for p in args.presets.split(",") if p.strip()) if args.presets else roofline.PRESETS
    report = roofline.run(presets, tuple(args.sizes or roofline.SIZES), args.batch,
                          tuple(args.steps or roofline.STEPS))
    text = roofline.markdown(report)
    print(text)
    path = write_json(args.out / roofline.RESULT_NAME, report)
    md = args.out / roofline.MARKDOWN_NAME
    md.write_text(text + "\n")
    print(f"wrote {path}\nwrote {md}")
    return 0
