"""Arguments and helpers shared by the core subcommands."""
from __future__ import annotations

import argparse

from backends.torch_backend import TorchBackend
from dgae.checkpoint import resolve_checkpoint


def add_checkpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "-c", default=None,
                   help="checkpoint .safetensors (default: $DGAE_CHECKPOINT, else the bundled weights/ model)")
    p.add_argument("--device", default="cpu", help="cpu | cuda[:N]")


def add_tile_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", action=argparse.BooleanOptionalAction, default=True,
                   help="images larger than the model's tile run as overlapping, blended tiles (bounded memory); "
                        "--no-tile processes them in one piece")


def tile_mode(args: argparse.Namespace) -> str:
    return "auto" if args.tile else "off"


def load_backend(args: argparse.Namespace) -> TorchBackend:
    return TorchBackend.from_checkpoint(resolve_checkpoint(args.checkpoint), device=args.device)
