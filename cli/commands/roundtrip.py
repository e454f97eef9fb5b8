"""`dgae roundtrip IMAGE... -o OUT_DIR [--steps N]`: encode + decode, PSNR per image."""
from __future__ import annotations

from pathlib import Path

from formats.images import FIT_POLICIES, encode_image
from cli.commands.codec import decode_batches, encode_batches, load_images, output_paths, psnr_uint8, seeds_for
from cli.commands.common import add_checkpoint_arg, add_tile_arg, load_backend, tile_mode

DEFAULT_BATCH = 8


def add_arguments(p) -> None:
    p.add_argument("images", nargs="+")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit", choices=FIT_POLICIES, default="crop")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    add_tile_arg(p)
    add_checkpoint_arg(p)


def run(args) -> int:
    backend = load_backend(args)
    rgbs, _ = load_images(args.images, backend.config.downsample_factor, args.fit)
    seeds = seeds_for(args.seed, len(rgbs))
    latents = encode_batches(backend, rgbs, "mean", seeds, args.batch_size, tile=tile_mode(args))
    recons = decode_batches(backend, latents, args.steps, seeds, args.batch_size, tile=tile_mode(args))
    Path(args.output).mkdir(parents=True, exist_ok=True)
    names = [Path(p).name for p in args.images]
    for name, path, rgb, rec in zip(names, output_paths(args.output, len(recons), names), rgbs, recons):
        path.write_bytes(encode_image(rec))
        print(f"{name}: PSNR {psnr_uint8(rgb, rec):.2f} dB -> {path}")
    return 0
