"""``dgae export diffusers DIR``: write a diffusers model folder (``config.json`` +
``diffusion_pytorch_model.safetensors``) from any DGAE checkpoint."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from dgae.checkpoint import load_checkpoint
from dgae.hashing import file_sha256

from .autoencoder_dgae import AutoencoderDGAE, cast

log = logging.getLogger(__name__)


def export_diffusers(checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                     dtype: torch.dtype = torch.float32, default_inference_steps: int | None = None) -> Path:
    """Load and validate ``checkpoint``, write it as an ``AutoencoderDGAE`` folder to ``out_dir``
    (``from_pretrained(out_dir)`` loads it). ``dtype``: the stored weights' dtype;
    ``default_inference_steps``: the decode steps when a caller passes none (else the model's)."""
    model = load_checkpoint(checkpoint)
    vae = AutoencoderDGAE.from_dgae(model, source_checkpoint_sha256=file_sha256(checkpoint))
    if default_inference_steps is not None:
        vae.register_to_config(default_inference_steps=int(default_inference_steps))
    out = Path(out_dir)
    cast(vae, dtype).save_pretrained(out, safe_serialization=True)
    log.info("wrote %s (from %s, %s)", out, checkpoint, dtype)
    return out
