"""`dgae export onnx ...`, `dgae export tensorrt ...` and `dgae export diffusers ...`.

    dgae export onnx [--checkpoint CKPT] -o DIR [--unroll-steps N] [--fp16] [--opset 18]
    dgae export tensorrt --onnx DIR -o ENGINE_DIR [--fp16|--bf16] [--min-batch 1 --opt-batch 8 --max-batch 16]
                         [--min-size 64 --opt-size 256 --max-size 512x768] [--timing-cache FILE] [--dry-run]

A failed validation exits 2 with the numbers and leaves the output directory's previous files as
they were (the rejected files are kept in DIR/.rejected/ for inspection).

    dgae export diffusers DIR [--checkpoint CKPT] [--fp16] [--steps N]

writes an ``AutoencoderDGAE`` folder (config.json + diffusion_pytorch_model.safetensors) that
``AutoencoderDGAE.from_pretrained(DIR)`` loads (docs/diffusers.md); diffusers is imported only
for this target.
"""
from __future__ import annotations

import argparse
import json
import logging

from export import manifest as mf

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from export.onnx_export import DEFAULT_OPSET  # noqa: PLC0415
    from export.tensorrt_build import DEFAULT_OPT_LEVEL, DEFAULT_WORKSPACE_GIB, ShapeRange  # noqa: PLC0415

    sub = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    o = sub.add_parser("onnx", help="export encoder + denoiser (+ unrolled decode) to ONNX and validate")
    o.add_argument("--checkpoint", "-c", default=None,
                   help="checkpoint .safetensors (default: $DGAE_CHECKPOINT, else the bundled weights/ model)")
    o.add_argument("-o", "--output", required=True, help="output directory")
    o.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    o.add_argument("--fp16", action="store_true", help="fp16 graphs for GPU runtimes (norms/softmax stay fp32)")
    o.add_argument("--unroll-steps", type=int, default=None, metavar="N",
                   help="also export the whole N-step decode as one graph (noise is an input)")
    o.add_argument("--no-encoder", action="store_true", help="skip the encoder graph")
    o.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime vs PyTorch validation")
    o.add_argument("--validate-sizes", default=None, metavar="HxW,...",
                   help="image sizes for validation (default: two sizes from the model's size multiple)")
    o.set_defaults(_run=_run_onnx)

    d = ShapeRange()
    t = sub.add_parser("tensorrt", help="build TensorRT engines from an ONNX export (needs TensorRT + GPU)")
    t.add_argument("--onnx", required=True, help="directory written by 'dgae export onnx'")
    t.add_argument("-o", "--output", required=True, help="engine output directory")
    prec = t.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_const", dest="precision", const="fp16")
    prec.add_argument("--bf16", action="store_const", dest="precision", const="bf16")
    t.set_defaults(precision="fp32")
    t.add_argument("--min-batch", type=int, default=d.min_batch)
    t.add_argument("--opt-batch", type=int, default=d.opt_batch)
    t.add_argument("--max-batch", type=int, default=d.max_batch)
    t.add_argument("--min-size", default="x".join(map(str, d.min_hw)), help="HxW or N (pixels)")
    t.add_argument("--opt-size", default="x".join(map(str, d.opt_hw)), help="HxW or N (pixels)")
    t.add_argument("--max-size", default="x".join(map(str, d.max_hw)), help="HxW or N (pixels)")
    t.add_argument("--workspace-gib", type=float, default=DEFAULT_WORKSPACE_GIB)
    t.add_argument("--opt-level", type=int, default=DEFAULT_OPT_LEVEL, help="builder optimization level 0-5")
    t.add_argument("--timing-cache", default=None, help="timing cache file (default ENGINE_DIR/timing.cache)")
    t.add_argument("--graphs", default=None, help="comma-separated subset of the export's graphs")
    t.add_argument("--dry-run", action="store_true", help="print the build plan (profiles, flags) and exit")
    t.set_defaults(_run=_run_tensorrt)

    f = sub.add_parser("diffusers", help="write a diffusers AutoencoderDGAE folder (from_pretrained(DIR) loads it)")
    f.add_argument("output", metavar="DIR", help="output folder")
    f.add_argument("--checkpoint", "-c", default=None,
                   help="checkpoint .safetensors (default: $DGAE_CHECKPOINT, else the bundled weights/ model)")
    f.add_argument("--fp16", action="store_true", help="store fp16 weights (half the size)")
    f.add_argument("--steps", type=int, default=None, metavar="N",
                   help="decode steps when a pipeline passes none (default: the model's own)")
    f.set_defaults(_run=_run_diffusers)


def run(args: argparse.Namespace) -> int:
    return args._run(args)


def _run_onnx(args: argparse.Namespace) -> int:
    from export.onnx_export import export_onnx  # noqa: PLC0415
    from export.tensorrt_build import parse_hw  # noqa: PLC0415
    from export.validate import format_rows  # noqa: PLC0415

    graphs = [mf.DENOISER] if args.no_encoder else [mf.ENCODER, mf.DENOISER]
    sizes = [parse_hw(s) for s in args.validate_sizes.split(",")] if args.validate_sizes else None
    manifest = export_onnx(args.checkpoint, args.output, opset=args.opset, precision="fp16" if args.fp16 else "fp32",
                           unroll_steps=args.unroll_steps, graphs=graphs, validate=not args.no_validate,
                           validation_sizes=sizes)
    if manifest.validation:
        print(format_rows(manifest.validation))
    print(f"wrote {', '.join(e.file for e in manifest.graphs.values())} and {mf.MANIFEST_NAME} to {args.output}")
    return 0


def _run_tensorrt(args: argparse.Namespace) -> int:
    from export.tensorrt_build import ShapeRange, build_engines, make_build_plan, parse_hw  # noqa: PLC0415

    shapes = ShapeRange(args.min_batch, args.opt_batch, args.max_batch, parse_hw(args.min_size),
                        parse_hw(args.opt_size), parse_hw(args.max_size))
    plan = make_build_plan(args.onnx, args.output, args.precision, shapes, args.workspace_gib, args.timing_cache,
                           args.graphs.split(",") if args.graphs else None, args.opt_level)
    if args.dry_run:
        print(
            json.dumps(
                {
                    "precision": plan.precision,
                    "flags": plan.flags,
                    "workspace_bytes": plan.workspace_bytes,
                    "timing_cache": plan.timing_cache,
                    "engines": {
                        e.graph: {
                            "onnx": e.onnx_file,
                            "engine": e.engine_file,
                            "profile": {k: ["x".join(map(str, s)) for s in v] for k, v in e.profile.items()},
                        }
                        for e in plan.engines
                    },
                },
                indent=2,
            )
        )
        return 0
    manifest = build_engines(plan)
    print(f"wrote {', '.join(e.file for e in manifest.graphs.values())} and {mf.MANIFEST_NAME} to {args.output} "
          f"(TensorRT {manifest.tensorrt['version']}, {manifest.tensorrt['gpu_name']})")
    return 0


def _run_diffusers(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    from dgae.checkpoint import resolve_checkpoint  # noqa: PLC0415
    from dgae_diffusers.export import export_diffusers  # noqa: PLC0415 - diffusers only for this target

    checkpoint = resolve_checkpoint(args.checkpoint)
    out = export_diffusers(checkpoint, args.output, torch.float16 if args.fp16 else torch.float32, args.steps)
    print(f"wrote {out}/config.json and the weights from {checkpoint}; "
          f"load with AutoencoderDGAE.from_pretrained({str(out)!r})")
    return 0
