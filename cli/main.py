"""`dgae` command-line tool. Each subcommand lives in its own module exposing
``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches and turns every
:class:`DGAEError` into a one-line message and exit code 2 (no traceback)."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from dgae.errors import DGAEError

log = logging.getLogger("dgae")

# name -> (module, help). Modules are imported lazily so `dgae info` never imports FastAPI/ONNX.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("cli.commands.info", "print a checkpoint's config, parameter counts and sha256"),
    "init": ("cli.commands.init", "write a random-init checkpoint of a preset"),
    "encode": ("cli.commands.encode", "encode images to a latents .safetensors file"),
    "decode": ("cli.commands.decode", "decode a latents file to images"),
    "roundtrip": ("cli.commands.roundtrip", "encode + decode images, print PSNR per image"),
    "encode-dataset": ("cli.commands.encode_dataset", "encode a folder / list / tar shards of images to latent shards"),
    "decode-dataset": ("cli.commands.decode_dataset", "decode latents in bulk to PNG shards or a folder"),
    "train": ("cli.commands.train", "train a DGAE model (torchrun for multi-GPU)"),
    "eval": ("cli.commands.eval", "evaluate reconstructions vs steps and the thumbnail baseline"),
    "export": ("cli.commands.export", "export to ONNX / build TensorRT engines / write a diffusers folder"),
    "serve": ("cli.commands.serve", "run the HTTP service"),
    "bench": ("cli.commands.bench", "run throughput / load / anchor benchmarks"),
    "kernels": ("cli.commands.kernels", "compile the Triton kernels ahead of time for sm_80 / sm_90"),
}
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgae", description="DGAE image tokenizer")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as exc:  # an optional dependency (e.g. the [serve] extra) is absent:
            # only this subcommand is unavailable; the others (train, eval, ...) still work
            p.set_defaults(_missing=f"'dgae {name}' is not available: Python module {exc.name!r} is not "
                                    f"installed (see pyproject.toml's optional dependencies)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if getattr(args, "_missing", None):
        print(f"error: {args._missing}", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except DGAEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
