"""`dgae init PRESET -o FILE`: random-init checkpoint (tests, benchmarks). Large presets are built
on the meta device first to report parameter counts without allocating."""
from __future__ import annotations

import torch

from dgae.checkpoint import save_checkpoint
from dgae.model import DGAE
from dgae.presets import get_preset, preset_names


def add_arguments(p) -> None:
    p.add_argument("preset", help=f"one of: {', '.join(preset_names())}")
    p.add_argument("-o", "--output", default=None, help="output .safetensors (omit to only print counts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fp16", action="store_true", help="store weights as float16")


def run(args) -> int:
    cfg = get_preset(args.preset)
    with torch.device("meta"):
        meta_model = DGAE(cfg)
    enc = sum(p.numel() for p in meta_model.encoder.parameters())
    dec = sum(p.numel() for p in meta_model.decoder.parameters())
    print(f"{cfg.name}: f={cfg.downsample_factor} c={cfg.latent_channels} "
          f"encoder {enc / 1e6:.2f}M decoder {dec / 1e6:.2f}M total {(enc + dec) / 1e6:.2f}M params")
    if args.output:
        torch.manual_seed(args.seed)
        model = DGAE(cfg)
        save_checkpoint(model, args.output, dtype=torch.float16 if args.fp16 else None,
                        extra_metadata={"init_seed": str(args.seed), "trained": "false"})
        print(f"wrote {args.output}")
    return 0
