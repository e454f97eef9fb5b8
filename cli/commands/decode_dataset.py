"""`dgae decode-dataset LATENTS OUT`: latents in bulk -> PNG shards or a folder of images."""
from __future__ import annotations

import argparse
import json

from bulk.decode import DEFAULT_BATCH_SIZE, DEFAULT_SHARD_SIZE, IMAGE_FORMATS, OUTPUT_FORMATS, DecodeOptions, run_decode
from cli.commands.common import tile_mode
from cli.commands.encode_dataset import add_backend_arguments, backend_options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("latents", help="an encode-dataset output, or a folder / file of .npy / .safetensors latents")
    p.add_argument("out", help="output folder (resumed when it holds a run with the same inputs and options)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="seeds derive from each latent's key and this")
    p.add_argument("--format", dest="output_format", choices=OUTPUT_FORMATS, default="wds",
                   help="wds: tar shards of <key>.png + <key>.json; folder: OUT/images/<key>.png")
    p.add_argument("--image-format", choices=IMAGE_FORMATS, default="png")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="latents per shard")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="latents per decode call")
    add_backend_arguments(p)


def run(args: argparse.Namespace) -> int:
    opts = DecodeOptions(src=args.latents, out=args.out, checkpoint=args.checkpoint, backend=args.backend,
                         device=args.device, precision=args.precision, backend_options=backend_options(args),
                         steps=args.steps, seed=args.seed, output_format=args.output_format,
                         image_format=args.image_format, shard_size=args.shard_size, batch_size=args.batch_size,
                         tile=tile_mode(args),
                         manifest_format=args.manifest, overwrite=args.overwrite, progress=not args.no_progress)
    summary = run_decode(opts)
    print(json.dumps({"out": args.out, **summary["counts"], "errors_file": summary["errors_file"]}))
    return 0
