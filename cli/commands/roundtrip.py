"""`dgae roundtrip IMAGE... -o OUT_DIR [--steps N]`: encode + decode, PSNR per image. Images of
different sizes are batched per size (nothing is written but the reconstructions)."""
from __future__ import annotations

from pathlib import Path

from formats.images import FIT_POLICIES, encode_image, output_format
from cli.commands.codec import (decode_batches, encode_batches, load_images, output_paths, psnr_uint8, seeds_for,
                                size_groups, write_output)
from cli.commands.common import add_checkpoint_arg, add_tile_arg, load_backend, tile_mode

DEFAULT_BATCH = 8


def add_arguments(p) -> None:
    p.add_argument("images", nargs="+")
    p.add_argument("-o", "--output", required=True,
                   help="output directory (or one .png / .jpg / .webp file for one image)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit", choices=FIT_POLICIES, default="crop")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    add_tile_arg(p)
    add_checkpoint_arg(p)


def run(args) -> int:
    names = [Path(p).name for p in args.images]
    paths = output_paths(args.output, len(args.images), names)  # before any model work
    backend = load_backend(args)
    rgbs, _ = load_images(args.images, backend.config.downsample_factor, args.fit, same_size=False)
    seeds = seeds_for(args.seed, len(rgbs))
    recons: list = [None] * len(rgbs)
    for group in size_groups(rgbs):  # one encode + decode per fitted size, seeds kept per image
        group_seeds = [seeds[i] for i in group]
        latents = encode_batches(backend, [rgbs[i] for i in group], "mean", group_seeds, args.batch_size,
                                 tile=tile_mode(args))
        decoded = decode_batches(backend, latents, args.steps, group_seeds, args.batch_size, tile=tile_mode(args))
        for i, rec in zip(group, decoded):
            recons[i] = rec
    for name, path, rgb, rec in zip(names, paths, rgbs, recons):
        write_output(path, encode_image(rec, output_format(path)))
        print(f"{name}: PSNR {psnr_uint8(rgb, rec):.2f} dB -> {path}")
    return 0
