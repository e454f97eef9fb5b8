"""Decode throughput: ONNX Runtime backend vs torch eager on the same checkpoint, latents and seeds.

    python -m benchmarks.ort_vs_torch --checkpoint CKPT [--onnx-dir DIR] [--batch 8] [--size 64] [--steps 2]

Each backend runs one warm-up, then ``repeats`` timed decodes in its own block; the medians and their ratio are
printed, with the max difference between the two
outputs (same seeds, so they must agree to ~1e-6 in fp32). :func:`compare_decode` is the entry
point for the benchmark suite.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time

import torch

from backends.factory import create_backend

log = logging.getLogger(__name__)

DEFAULT_BATCH, DEFAULT_SIZE, DEFAULT_STEPS, DEFAULT_REPEATS = 8, 64, 2, 5
LATENT_SEED, DECODE_SEED = 1234, 0


def _timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def compare_decode(checkpoint, onnx_dir=None, batch: int = DEFAULT_BATCH, size: int = DEFAULT_SIZE,
                   steps: int = DEFAULT_STEPS, repeats: int = DEFAULT_REPEATS, threads: int = 0,
                   use_unrolled: bool = True, torch_threads: int = 0) -> dict:
    if torch_threads:
        torch.set_num_threads(torch_threads)
    torch_backend = create_backend("torch", checkpoint)
    ort_backend = create_backend("onnxruntime", checkpoint, onnx_dir=onnx_dir, threads=threads,
                                 use_unrolled=use_unrolled)
    cfg = torch_backend.config
    side = size // cfg.downsample_factor
    latents = torch.randn(
        (batch, cfg.latent_channels, side, side), generator=torch.Generator().manual_seed(LATENT_SEED)
    )
    runs = {"torch": lambda: torch_backend.decode(latents, steps, DECODE_SEED),
            "onnxruntime": lambda: ort_backend.decode(latents, steps, DECODE_SEED)}
    outs = {name: fn() for name, fn in runs.items()}  # warm-up (and the outputs to compare)
    # One block per backend (not interleaved): ORT's idle worker threads spin after a run and would
    # steal the cores from a torch run that follows immediately.
    times = {name: [_timed(fn)[0] for _ in range(repeats)] for name, fn in runs.items()}
    med = {name: statistics.median(v) for name, v in times.items()}
    return {"preset": cfg.name, "batch": batch, "size": size, "steps": steps, "repeats": repeats,
            "torch_s": med["torch"], "onnxruntime_s": med["onnxruntime"],
            "speedup_ort_over_torch": med["torch"] / med["onnxruntime"],
            "torch_images_per_s": batch / med["torch"], "onnxruntime_images_per_s": batch / med["onnxruntime"],
            "max_abs_diff": float((outs["torch"] - outs["onnxruntime"]).abs().max()),
            "torch_threads": torch.get_num_threads(), "ort": ort_backend.info().to_dict(),
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "load_avg_1m": os.getloadavg()[0]},
            "raw_times": times}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--onnx-dir", default=None, help="existing export (default: export into the cache)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    p.add_argument("--size", type=int, default=DEFAULT_SIZE)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (default: usable cores)")
    p.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--no-unrolled", action="store_true", help="drive the denoiser graph step by step")
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    r = compare_decode(args.checkpoint, args.onnx_dir, args.batch, args.size, args.steps, args.repeats,
                       args.threads, not args.no_unrolled, args.torch_threads)
    print(f"{r['preset']} decode batch {r['batch']} {r['size']}px {r['steps']} steps, median of {r['repeats']}: "
          f"torch eager {r['torch_s'] * 1e3:.1f} ms, onnxruntime {r['onnxruntime_s'] * 1e3:.1f} ms -> "
          f"ORT/torch speedup {r['speedup_ort_over_torch']:.2f}x (max |diff| {r['max_abs_diff']:.2g}, "
          f"threads torch {r['torch_threads']} / ort {r['ort']['extra']['threads']}, "
          f"load avg {r['machine']['load_avg_1m']:.1f} on {r['machine']['cores']} cores)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(r, fh, indent=2)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
