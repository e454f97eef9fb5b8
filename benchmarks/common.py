"""What every `dgae bench` subcommand shares: checkpoint and device resolution, list parsing,
and the results file names."""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

from dgae.errors import CheckpointError, InputError

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("benchmarks/results")
FALLBACK_PRESET = "small-f8c4"            # the bundled model's preset
RANDOM_INIT_SEED = 0
OMP_THREADS_ENV = "OMP_NUM_THREADS"


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "-c", default=None,
                   help="checkpoint (default: $DGAE_CHECKPOINT, else the bundled weights/ model, else a "
                        f"random-init {FALLBACK_PRESET}; random weights do not change speed)")
    p.add_argument("--preset", default=None,
                   help="benchmark a random-init checkpoint of this preset instead (recorded in the JSON)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (auto: cuda when available)")
    p.add_argument("--quick", action="store_true", help="the small CPU set `make bench` runs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (JSON + PNG)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for torch, ONNX Runtime and the started services (default: the "
                        "libraries' own, all usable cores); 1 avoids OpenMP stalls on an oversubscribed CPU")


def apply_threads(threads: int | None) -> None:
    """Pin intra-op threads here and (via OMP_NUM_THREADS) in child processes such as the service."""
    if threads is None:
        return
    if threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    import torch  # noqa: PLC0415

    torch.set_num_threads(threads)
    os.environ[OMP_THREADS_ENV] = str(threads)


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def resolve_device(device: str) -> str:
    import torch  # noqa: PLC0415

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    return device


def random_checkpoint(preset: str) -> Path:
    """A seeded random-init checkpoint of ``preset`` in the temp folder (written once)."""
    import torch  # noqa: PLC0415

    from dgae.checkpoint import save_checkpoint  # noqa: PLC0415
    from dgae.model import DGAE  # noqa: PLC0415
    from dgae.presets import get_preset  # noqa: PLC0415

    config = get_preset(preset)
    path = Path(tempfile.gettempdir()) / "dgae-bench" / f"random-{preset}-seed{RANDOM_INIT_SEED}.safetensors"
    if not path.is_file():
        torch.manual_seed(RANDOM_INIT_SEED)
        save_checkpoint(DGAE(config), path, extra_metadata={"init_seed": str(RANDOM_INIT_SEED), "trained": "false"})
    return path


def resolve_bench_checkpoint(args: argparse.Namespace) -> Path:
    from dgae.checkpoint import resolve_checkpoint  # noqa: PLC0415

    if args.preset:
        if args.checkpoint:
            raise InputError("give --checkpoint or --preset, not both")
        return random_checkpoint(args.preset)
    try:
        return resolve_checkpoint(args.checkpoint)
    except CheckpointError:
        if args.checkpoint:
            raise
        log.warning("no trained checkpoint found: benchmarking a random-init %s (same speed)", FALLBACK_PRESET)
        return random_checkpoint(FALLBACK_PRESET)


def results_name(benchmark: str, device: str) -> str:
    return f"{benchmark}-{'cuda' if device.startswith('cuda') else 'cpu'}"
