"""Latent files: safetensors with a ``latents`` tensor [N, c, h, w] and JSON metadata (model id,
checkpoint sha256, f, c, mode, seeds, per-image original size / fit). Also .npy for plain arrays."""
from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import InputError

LATENTS_KEY = "latents"
META_KEY = "dgae"
ALLOWED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def dump_safetensors(latents: torch.Tensor, meta: dict[str, Any]) -> bytes:
    return st_save({LATENTS_KEY: latents.contiguous().cpu()}, metadata={META_KEY: json.dumps(meta)})


def dump_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def load_safetensors(data: bytes, name: str = "payload") -> tuple[torch.Tensor, dict[str, Any]]:
    """Parse a latents safetensors payload. Accepts the key ``latents`` or a single tensor."""
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")  # st_load() does not return the metadata
        header = json.loads(data[8:8 + header_len])
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError, OverflowError) as exc:
        raise InputError(f"{name}: malformed or truncated safetensors payload ({str(exc)[:200]})") from exc
    if LATENTS_KEY in tensors:
        t = tensors[LATENTS_KEY]
    elif len(tensors) == 1:
        t = next(iter(tensors.values()))
    else:
        raise InputError(f"{name}: expected a tensor named {LATENTS_KEY!r} (found {sorted(tensors)})")
    meta_raw = (header.get("__metadata__") or {}).get(META_KEY)
    try:
        meta = json.loads(meta_raw) if meta_raw else {}
    except json.JSONDecodeError:
        meta = {}
    return check_latent_tensor(t, name), meta if isinstance(meta, dict) else {}


def load_npy(data: bytes, name: str = "payload") -> torch.Tensor:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{name}: malformed or truncated .npy payload ({str(exc)[:200]})") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype not in (np.float32, np.float16):
        raise InputError(f"{name}: npy dtype must be float32 or float16, got {getattr(arr, 'dtype', type(arr))}")
    return check_latent_tensor(torch.from_numpy(arr.copy()), name)


def check_latent_tensor(t: torch.Tensor, name: str = "latents") -> torch.Tensor:
    """Rank 3 -> add batch dim; dtype float16/32/bf16 -> float32; rank otherwise is an error."""
    if t.dtype not in ALLOWED_DTYPES:
        raise InputError(f"{name}: latent dtype must be float32 or float16, got {t.dtype}")
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4:
        raise InputError(f"{name}: latents must have rank 3 (c, h, w) or 4 (N, c, h, w), got shape {tuple(t.shape)}")
    if 0 in t.shape:
        raise InputError(f"{name}: latents have an empty dimension {tuple(t.shape)}")
    return t.float()
