"""`dgae encode IMAGE... -o LATENTS.safetensors`."""
from __future__ import annotations

from pathlib import Path

from formats.images import FIT_POLICIES
from formats.latents import dump_safetensors, encode_metadata
from cli.commands.codec import encode_batches, latents_output, load_images, seeds_for, write_output
from cli.commands.common import add_checkpoint_arg, add_tile_arg, load_backend, tile_mode

DEFAULT_BATCH = 8


def add_arguments(p) -> None:
    p.add_argument("images", nargs="+")
    p.add_argument("-o", "--output", required=True, help="latents .safetensors")
    p.add_argument("--mode", choices=("mean", "sample"), default="mean")
    p.add_argument("--seed", type=int, default=None, help="seed for --mode sample (item i uses seed+i)")
    p.add_argument("--fit", choices=FIT_POLICIES, default="pad")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    add_tile_arg(p)
    add_checkpoint_arg(p)


def run(args) -> int:
    output = latents_output(args.output)  # before any model work
    backend = load_backend(args)
    f = backend.config.downsample_factor
    rgbs, infos = load_images(args.images, f, args.fit)
    seeds = seeds_for(args.seed if args.seed is not None else 0, len(rgbs))
    latents = encode_batches(backend, rgbs, args.mode, seeds, args.batch_size, tile=tile_mode(args))
    meta = encode_metadata(backend.config, backend.checkpoint_sha256, args.mode, seeds,
                           [Path(n).name for n in args.images], infos)
    write_output(output, dump_safetensors(latents, meta))
    print(f"wrote {args.output}: latents {tuple(latents.shape)}")
    return 0
