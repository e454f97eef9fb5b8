"""`dgae decode LATENTS.safetensors -o OUT_DIR_OR_PNG [--steps N] [--seed S]`."""
from __future__ import annotations

from pathlib import Path

from dgae.errors import InputError
from dgae.imageio import encode_image
from dgae.latents_io import load_npy, load_safetensors
from cli.commands.codec import decode_batches, output_paths, restore_all, seeds_for
from cli.commands.common import add_checkpoint_arg, load_backend

DEFAULT_BATCH = 8


def add_arguments(p) -> None:
    p.add_argument("latents", help="latents .safetensors (or .npy)")
    p.add_argument("-o", "--output", required=True, help="directory, or one .png when there is one latent")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="item i uses seed+i")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    add_checkpoint_arg(p)


def read_latents(path: str):
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from exc
    if path.endswith(".npy"):
        return load_npy(data, path), {}
    return load_safetensors(data, path)


def run(args) -> int:
    latents, meta = read_latents(args.latents)
    backend = load_backend(args)
    seeds = seeds_for(args.seed, len(latents))
    rgbs = decode_batches(backend, latents, args.steps, seeds, args.batch_size)
    names = [im.get("name", "") for im in meta.get("images", [])]
    for path, rgb in zip(output_paths(args.output, len(rgbs), names), restore_all(rgbs, meta.get("images"))):
        path.write_bytes(encode_image(rgb, path.suffix.lstrip(".") or "png"))
        print(f"wrote {path}")
    return 0
