"""Checkpoint format: safetensors weights + config JSON and format version in the metadata.

Never pickle. Loading validates everything and raises :class:`CheckpointError` with one line
naming the problem (missing file, truncated/not safetensors, not DGAE, config invalid, tensor
missing/unexpected/shape mismatch).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import DGAEConfig
from .errors import CheckpointError, ConfigError
from .hashing import file_sha256
from .model import DGAE

log = logging.getLogger(__name__)

FORMAT_NAME = "dgae"
FORMAT_VERSION = 1
DEFAULT_CHECKPOINT_ENV = "DGAE_CHECKPOINT"
BUNDLED_CHECKPOINT = Path(__file__).resolve().parent.parent / "weights" / "dgae-small-f8c4.safetensors"


def save_checkpoint(model: DGAE, path: str | os.PathLike, dtype: torch.dtype | None = None,
                    extra_metadata: dict[str, str] | None = None) -> Path:
    """Write model weights (optionally cast, e.g. fp16 to halve the file) + config metadata.
    The file is written to a temporary name and renamed, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
               for k, v in model.state_dict().items()}
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "config": model.config.to_json()}
    meta.update(extra_metadata or {})
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a DGAE checkpoint (metadata 'format' is {meta.get('format')!r})")
    version = meta.get("format_version", "")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported format_version {version!r} (this build reads <= {FORMAT_VERSION})")
    return meta


def read_config(path: str | os.PathLike) -> DGAEConfig:
    meta = read_metadata(path)
    try:
        return DGAEConfig.from_json(meta.get("config", ""))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def read_state(path: str | os.PathLike, config: DGAEConfig,
               dtype: torch.dtype = torch.float32) -> tuple[DGAE, dict[str, torch.Tensor]]:
    """The checkpoint's tensors, validated against the model its config builds (on the meta device):
    every tensor present, none extra, each of the expected shape, all finite. The one validation
    behind both loading and ``dgae info``."""
    with torch.device("meta"):
        model = DGAE(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            keys = set(fh.keys())
            missing, unexpected = sorted(set(expected) - keys), sorted(keys - set(expected))
            if missing:
                raise CheckpointError(f"{path}: tensor {missing[0]!r} missing ({len(missing)} missing in all)")
            if unexpected:
                raise CheckpointError(f"{path}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} in all)")
            for k in expected:
                shape = tuple(fh.get_slice(k).get_shape())
                if shape != expected[k]:
                    raise CheckpointError(f"{path}: tensor {k!r} has shape {shape}, config "
                                          f"{config.name!r} expects {expected[k]}")
                state[k] = fh.get_tensor(k).to(dtype)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot read tensors (truncated or corrupt?): {exc}") from exc
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{path}: tensor {k!r} contains NaN or infinite values")
    return model, state


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> DGAE:
    """Build the model from the file's config and load its weights, validating every tensor."""
    model, state = read_state(path, read_config(path), dtype)
    model = model.to_empty(device="cpu")
    model.load_state_dict(state, strict=True, assign=False)
    return model.to(device=device, dtype=dtype).eval()


def resolve_checkpoint(path: str | os.PathLike | None) -> Path:
    """An explicit path, else $DGAE_CHECKPOINT, else the bundled default in weights/."""
    if path:
        return Path(path)
    if os.environ.get(DEFAULT_CHECKPOINT_ENV):
        return Path(os.environ[DEFAULT_CHECKPOINT_ENV])
    if BUNDLED_CHECKPOINT.is_file():
        return BUNDLED_CHECKPOINT
    raise CheckpointError(f"no checkpoint given and the bundled default {BUNDLED_CHECKPOINT} does not exist "
                          f"yet; pass --checkpoint or create one with 'dgae init PRESET -o FILE'")


def describe(path: str | os.PathLike) -> dict:
    """What `dgae info` prints: config, parameter counts, sha256, size, metadata."""
    meta = read_metadata(path)
    config = read_config(path)
    model, _ = read_state(path, config)  # validated exactly as loading validates
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    extra = {k: v for k, v in meta.items() if k not in ("config", "format", "format_version")}
    return {"path": str(path), "sha256": file_sha256(path), "bytes": Path(path).stat().st_size,
            "format_version": int(meta["format_version"]), "preset": config.name,
            "downsample_factor": config.downsample_factor, "latent_channels": config.latent_channels,
            "params": {"encoder": count(model.encoder), "decoder": count(model.decoder), "total": count(model)},
            "config": json.loads(config.to_json()), "metadata": extra}
