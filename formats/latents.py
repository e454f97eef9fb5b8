"""The one latent codec, shared by the CLI and the service: safetensors with a ``latents`` tensor
[N, c, h, w] and JSON metadata (model id, checkpoint sha256, f, c, mode, seeds, per-image
original size / fit), or plain .npy. Parsing never trusts a header: every problem is a one-line
:class:`InputError` naming the payload.
"""
from __future__ import annotations

import io
import json
import math
import tokenize
from dataclasses import fields
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from dgae.config import DGAEConfig
from dgae.errors import InputError, TooLargeError
from .images import FIT_POLICIES, FitInfo

LATENTS_KEY = "latents"
META_KEY = "dgae"
IMAGES_KEY = "images"
ALLOWED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
NPY_MAGIC = b"\x93NUMPY"
NPY_DTYPES = (np.dtype("<f4"), np.dtype("<f2"))
NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


# --- writing -------------------------------------------------------------------------------------
def dump_safetensors(latents: torch.Tensor, meta: dict[str, Any]) -> bytes:
    return st_save({LATENTS_KEY: latents.contiguous().cpu()}, metadata={META_KEY: json.dumps(meta)})


def dump_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def encode_metadata(config: DGAEConfig, checkpoint_sha256: str, mode: str, seeds: Sequence[int],
                    names: Sequence[str], infos: Sequence[FitInfo]) -> dict[str, Any]:
    """What an encode records beside its latents (decode restores each image's size from it)."""
    return {"model": config.name, "checkpoint_sha256": checkpoint_sha256, "f": config.downsample_factor,
            "c": config.latent_channels, "mode": mode, "seeds": list(seeds) if mode == "sample" else None,
            IMAGES_KEY: [dict(name=name, **info.to_dict()) for name, info in zip(names, infos)]}


# --- reading -------------------------------------------------------------------------------------
def load_latents(data: bytes, name: str = "payload") -> tuple[torch.Tensor, dict[str, Any]]:
    """Latents float32 [N, c, h, w] and their metadata (empty for npy) from npy or safetensors bytes
    (recognised by content, not by name)."""
    if not data:
        raise InputError(f"{name}: empty: expected latents as safetensors or npy")
    if data.startswith(NPY_MAGIC):
        return load_npy(data, name), {}
    return load_safetensors(data, name)


def load_safetensors(data: bytes, name: str = "payload") -> tuple[torch.Tensor, dict[str, Any]]:
    """Parse a latents safetensors payload. Accepts the key ``latents`` or a single tensor."""
    try:
        header_len = int.from_bytes(data[:8], "little")  # st_load() does not return the metadata
        header = json.loads(data[8:8 + header_len])
        _refuse_empty_tensors(header, name)
        tensors = st_load(data)
    except (SafetensorError, ValueError, OverflowError, RecursionError) as exc:
        raise InputError(f"{name}: malformed or truncated safetensors payload ({str(exc)[:200]})") from exc
    if LATENTS_KEY in tensors:
        t = tensors[LATENTS_KEY]
    elif len(tensors) == 1:
        t = next(iter(tensors.values()))
    else:
        raise InputError(f"{name}: expected a tensor named {LATENTS_KEY!r} (found {sorted(tensors)})")
    return check_latent_tensor(t, name), _metadata(header, name)


def _refuse_empty_tensors(header: object, name: str) -> None:
    """An empty tensor is never latents, and safetensors' torch conversion builds it with
    ``torch.empty(shape)``, which raises TypeError or RuntimeError when its other dimensions overflow
    int64 (``[0, 2**63]``): refuse it from the header, before anything is built. (A non-empty tensor's
    shape is bounded by its bytes, which safetensors checks.)"""
    if not isinstance(header, dict):
        return  # safetensors refuses it
    for key, entry in header.items():
        shape = entry.get("shape") if isinstance(entry, dict) and key != "__metadata__" else None
        if isinstance(shape, list) and any(type(d) is int and d == 0 for d in shape):
            raise InputError(f"{name}: tensor {str(key)[:40]!r} has an empty dimension {shape[:8]}")


def _metadata(header: dict, name: str) -> dict[str, Any]:
    """The ``dgae`` JSON metadata of a safetensors header ({} when absent). Malformed metadata is an
    InputError: it decides crops and resizes, so it is never silently dropped."""
    meta_raw = (header.get("__metadata__") or {}).get(META_KEY)
    if not meta_raw:
        return {}
    try:
        meta = json.loads(meta_raw)
    except (ValueError, RecursionError) as exc:  # ValueError: syntax or an int over 4300 digits
        raise InputError(f"{name}: the {META_KEY!r} metadata is not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{name}: the {META_KEY!r} metadata must be a JSON object")
    return meta


def load_npy(data: bytes, name: str = "payload") -> torch.Tensor:
    """Parse .npy without trusting its header: shape x itemsize must equal the bytes present."""
    fh = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fh)
        read_header = NPY_HEADER_READERS.get(version)
        if read_header is None:
            raise ValueError(f"unsupported .npy version {version}")
        shape, fortran, dtype = read_header(fh)
    except (ValueError, SyntaxError, TypeError, EOFError, tokenize.TokenError, RecursionError) as exc:
        # numpy tokenizes and literal_evals the header: an unterminated string or bracket is a TokenError
        raise InputError(f"{name}: malformed .npy header ({str(exc)[:200]})") from None
    if dtype not in NPY_DTYPES:
        raise InputError(f"{name}: npy dtype must be little-endian float32 or float16, got {dtype}")
    expected = math.prod(shape) * dtype.itemsize
    payload = data[fh.tell():]
    if len(payload) != expected:
        raise InputError(f"{name}: truncated or oversized .npy payload: shape {shape} needs {expected} bytes, "
                         f"got {len(payload)}")
    arr = np.frombuffer(payload, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return check_latent_tensor(torch.from_numpy(np.array(arr, dtype=np.float32, order="C")), name)


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


# --- metadata ------------------------------------------------------------------------------------
def fit_infos(meta: dict, n: int, max_pixels: int) -> list[FitInfo | None]:
    """Per-latent fit records from latent metadata, validated (they drive crops and resizes)."""
    images = meta.get(IMAGES_KEY)
    if images is None:
        return [None] * n
    if not isinstance(images, list) or len(images) != n:
        raise InputError(f"metadata '{IMAGES_KEY}' must be a list with one entry per latent ({n})")
    out = []
    for i, d in enumerate(images):
        try:
            info = FitInfo(**{fl.name: d[fl.name] for fl in fields(FitInfo) if fl.name in d})
        except (TypeError, KeyError) as exc:
            raise InputError(f"metadata images[{i}]: {exc}") from None
        ints = [getattr(info, fl.name) for fl in fields(FitInfo) if fl.name != "fit"]
        if not all(type(v) is int and v >= 0 for v in ints) or info.fit not in FIT_POLICIES:
            raise InputError(f"metadata images[{i}]: sizes must be non-negative integers and fit one of "
                             f"{', '.join(FIT_POLICIES)}")
        if not 0 < info.orig_height * info.orig_width <= max_pixels:
            raise TooLargeError(f"metadata images[{i}]: original size {info.orig_width}x{info.orig_height} "
                                f"is empty or over the pixel limit {max_pixels}")
        out.append(info)
    return out


def image_names(meta: dict) -> list[str]:
    """The original file names recorded at encode time ('' where absent)."""
    return [im.get("name", "") if isinstance(im, dict) else "" for im in meta.get(IMAGES_KEY) or []]
