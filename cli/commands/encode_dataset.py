"""`dgae encode-dataset SRC OUT`: a folder / list / WebDataset tars of images -> latent shards."""
from __future__ import annotations

import argparse
import json

from backends.factory import BACKENDS
from bulk.encode import DEFAULT_BATCH_SIZE, DEFAULT_SHARD_SIZE, DEFAULT_WORKERS, ENGINES, EncodeOptions, run_encode
from bulk.preprocess import CROP_STYLES, Preprocess
from cli.commands.common import add_checkpoint_arg, add_tile_arg, tile_mode
from formats.shards import MANIFEST_FORMATS, SHARD_FORMATS, STORE_MODES
from dgae.errors import InputError
from formats.images import FIT_POLICIES
from dgae.precision import PRECISIONS


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_arg(p)
    add_tile_arg(p)
    p.add_argument("--backend", choices=BACKENDS, default="torch", help="runtime (as the service's)")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32", help="the backend's compute precision")
    p.add_argument("--onnx-dir", default=None, help="onnxruntime: an export (default: the export cache)")
    p.add_argument("--engine-dir", default=None, help="tensorrt: engines from 'dgae export tensorrt'")
    p.add_argument("--manifest", choices=MANIFEST_FORMATS, default="jsonl", help="manifest file format")
    p.add_argument("--overwrite", action="store_true", help="discard what OUT holds and start again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def backend_options(args: argparse.Namespace) -> dict:
    return {k: v for k, v in (("onnx_dir", args.onnx_dir), ("engine_dir", args.engine_dir)) if v}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="folder of images (recursive), .txt/.csv list (path[,label]), or .tar shard(s) "
                               "(a file, a glob or a {000..009} pattern)")
    p.add_argument("out", help="output folder (resumed when it holds a run with the same inputs and options)")
    g = p.add_argument_group("preprocessing")
    g.add_argument("--resize", type=int, default=None, metavar="SIZE", help="bicubic-resize the short side to SIZE")
    g.add_argument("--center-crop", type=int, default=None, metavar="SIZE",
                   help="SIZE x SIZE centre crop; with --crop-style adm (default) ADM's center_crop_arr (DiT/SiT/REPA)")
    g.add_argument("--crop-style", choices=CROP_STYLES, default="adm",
                   help="adm: box-halve + bicubic short side + crop; center: plain crop (after --resize)")
    g.add_argument("--fit", choices=FIT_POLICIES, default="pad", help="sides that are not multiples of f")
    g.add_argument("--flip", action="store_true", help="also store the mirrored image's latents (<field>_flip)")
    g.add_argument("--folder-labels", action="store_true", help="folder SRC: label = index of the top-level sub-folder")
    g = p.add_argument_group("output")
    g.add_argument("--store", choices=STORE_MODES, default="mean",
                   help="mean / sample: public latents as 'dgae encode --mode'; moments: raw mean + logvar")
    g.add_argument("--seed", type=int, default=0, help="--store sample: seeds derive from each key and this")
    g.add_argument("--dtype", choices=tuple(PRECISIONS), default="fp32", help="precision of the stored latents")
    g.add_argument("--shard-format", choices=tuple(SHARD_FORMATS), default="wds",
                   help="wds: WebDataset tar (a .safetensors per sample); safetensors: one file per shard")
    g.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="input images per shard")
    g.add_argument("--strict", action="store_true", help="an unusable input is fatal instead of listed in errors.jsonl")
    g = p.add_argument_group("compute")
    g.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="images per encode call (split further above the backend's own limit)")
    g.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="DataLoader workers decoding images (0: inline)"
    )
    g.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0: torch's default; Ray actors: their CPUs). CPU results depend "
                        "on it in the last bits: give both engines the same count for identical shards")
    g.add_argument("--engine", choices=ENGINES, default="local", help="local (also under torchrun) or ray")
    g.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    g.add_argument("--ray-actors", type=int, default=1, help="actor pool size (one per GPU or CPU slot)")
    g.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of the local Ray started here")
    g.add_argument("--ray-cpus-per-actor", type=float, default=1.0)
    g.add_argument("--ray-gpus-per-actor", type=float, default=0.0)
    add_backend_arguments(p)


def run(args: argparse.Namespace) -> int:
    pre = Preprocess(resize=args.resize, center_crop=args.center_crop, crop_style=args.crop_style, fit=args.fit,
                     flip=args.flip)
    if args.engine != "ray" and (args.ray_address or args.ray_num_cpus):
        raise InputError("--ray-address / --ray-num-cpus need --engine ray")
    opts = EncodeOptions(src=args.src, out=args.out, checkpoint=args.checkpoint, backend=args.backend,
                         device=args.device, precision=args.precision, backend_options=backend_options(args),
                         preprocess=pre, store=args.store, seed=args.seed, dtype=args.dtype,
                         shard_format=args.shard_format, shard_size=args.shard_size, manifest_format=args.manifest,
                         batch_size=args.batch_size, tile=tile_mode(args), workers=args.workers,
                         threads=args.threads, strict=args.strict,
                         folder_labels=args.folder_labels, overwrite=args.overwrite, progress=not args.no_progress,
                         engine=args.engine, ray_actors=args.ray_actors, ray_address=args.ray_address,
                         ray_num_cpus=args.ray_num_cpus, ray_cpus_per_actor=args.ray_cpus_per_actor,
                         ray_gpus_per_actor=args.ray_gpus_per_actor)
    summary = run_encode(opts)
    if summary:
        print(json.dumps({"out": args.out, **summary["counts"], "shards": len(summary["shards"]),
                          "errors_file": summary["errors_file"]}))
    return 0
