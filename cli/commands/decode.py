"""`dgae decode LATENTS.safetensors -o OUT_DIR_OR_PNG [--steps N] [--seed S] [--server URL]`.

With ``--server URL`` the decode runs on a dgae-serve service as a job (``POST /v1/jobs/decode``, the
latents file sent as it is, so the service restores the original sizes), followed with a progress
bar of its denoiser passes; without it, in this process on the local checkpoint.
"""
from __future__ import annotations

import os
from pathlib import Path

from dgae.errors import InputError
from formats.images import DEFAULT_MAX_PIXELS, encode_image, output_format, restore_size
from formats.latents import fit_infos, image_names, load_latents
from cli.commands.codec import decode_batches, output_paths, seeds_for, write_output
from cli.commands.common import add_checkpoint_arg, add_tile_arg, load_backend, tile_mode

DEFAULT_BATCH = 8
API_KEY_ENV = "DGAE_API_KEY"
SERVER_TIMEOUT_S = 600.0  # per HTTP call; the job itself may run longer


def add_arguments(p) -> None:
    p.add_argument("latents", help="latents .safetensors (or .npy)")
    p.add_argument("-o", "--output", required=True,
                   help="directory (of .png), or one .png / .jpg / .webp file when there is one latent")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="item i uses seed+i")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    add_tile_arg(p)
    add_checkpoint_arg(p)
    p.add_argument("--server", default=None, metavar="URL",
                   help="decode on this dgae-serve service as a job, with progress (e.g. http://localhost:8000)")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"the service's API key (default: ${API_KEY_ENV})")


def read_latents(path: str):
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from exc
    return load_latents(data, path)


def run(args) -> int:
    latents, meta = read_latents(args.latents)
    infos = fit_infos(meta, len(latents), DEFAULT_MAX_PIXELS)  # validated as the service does
    paths = output_paths(args.output, len(latents), image_names(meta))  # before any decoding
    if args.server:
        return _run_on_server(args, paths)
    backend = load_backend(args)
    seeds = seeds_for(args.seed, len(latents))
    rgbs = decode_batches(backend, latents, args.steps, seeds, args.batch_size, tile=tile_mode(args))
    for path, rgb, info in zip(paths, rgbs, infos):
        write_output(path, encode_image(restore_size(rgb, info), output_format(path)))
        print(f"wrote {path}")
    return 0


def _run_on_server(args, paths: list[Path]) -> int:
    from dgae_client import Client, ClientError  # noqa: PLC0415 - only for --server

    fmt = output_format(paths[0])
    try:
        with Client(args.server, api_key=args.api_key, timeout_s=SERVER_TIMEOUT_S) as client:
            job = client.submit_decode(Path(args.latents), steps=args.steps, seeds=args.seed, image_format=fmt)
            print(f"job {job.id} submitted to {args.server}")
            files = client.wait(job)
    except ClientError as exc:
        raise InputError(f"{args.server}: {exc}") from None
    for path, data in zip(paths, files):
        write_output(path, data)
        print(f"wrote {path}")
    return 0
