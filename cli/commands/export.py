"""`dgae export TARGET`: the ONNX / TensorRT targets of :mod:`export.cli`, plus

    dgae export diffusers DIR [--checkpoint CKPT] [--fp16] [--steps N]

which writes an ``AutoencoderDGAE`` folder (config.json + diffusion_pytorch_model.safetensors)
that diffusers' ``AutoencoderDGAE.from_pretrained(DIR)`` loads (see docs/diffusers.md). The
diffusers import is lazy: ``dgae export onnx`` works without diffusers installed."""
from __future__ import annotations

import argparse

import torch

from dgae.checkpoint import resolve_checkpoint
from export import cli as export_cli


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = export_cli.add_arguments(p)
    d = sub.add_parser("diffusers", help="write a diffusers AutoencoderDGAE folder (from_pretrained(DIR) loads it)")
    d.add_argument("output", metavar="DIR", help="output folder")
    d.add_argument("--checkpoint", "-c", default=None,
                   help="checkpoint .safetensors (default: $DGAE_CHECKPOINT, else the bundled weights/ model)")
    d.add_argument("--fp16", action="store_true", help="store fp16 weights (half the size)")
    d.add_argument("--steps", type=int, default=None, metavar="N",
                   help="decode steps when a pipeline passes none (default: the model's own)")
    d.set_defaults(_run=_run_diffusers)


def run(args: argparse.Namespace) -> int:
    return export_cli.run(args)


def _run_diffusers(args: argparse.Namespace) -> int:
    from dgae_diffusers.export import export_diffusers  # noqa: PLC0415 - diffusers only for this target

    checkpoint = resolve_checkpoint(args.checkpoint)
    out = export_diffusers(checkpoint, args.output, torch.float16 if args.fp16 else torch.float32, args.steps)
    print(f"wrote {out}/config.json and the weights from {checkpoint}; "
          f"load with AutoencoderDGAE.from_pretrained({str(out)!r})")
    return 0
