"""Latents with the service's fit metadata: what ``encode`` returns and ``decode`` sends back, so an
image padded / resized to fit the model comes back at its original size (issue 27).

The service's safetensors answer to ``/encode`` carries, beside the tensor ``latents``, the JSON
metadata ``dgae``: model, f, c, mode, seeds and per image (``images``) its name, original size and
the ``fit`` applied. ``encode`` keeps it as ``.metadata`` on the array it returns (a :class:`Latents`
numpy array, or a torch tensor with that attribute); ``decode`` sends it back as safetensors, so the
service crops / resizes image files, and :func:`restore` does the same here for arrays.

Read and written with ``safetensors.numpy`` and the header's JSON: no torch, nothing of the project.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
from PIL import Image
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from .errors import ArgumentError, ResponseError

LATENTS_KEY = "latents"         # the tensor's name in the service's safetensors
META_KEY = "dgae"               # the safetensors metadata entry (a JSON string)
IMAGES_KEY = "images"           # in it: one fit record per latent
HEADER_LEN_BYTES = 8            # safetensors: little-endian u64 header length, then the JSON header
SAFETENSORS_META = "__metadata__"
FIT_PAD, FIT_RESIZE = "pad", "resize"
FIT_SIZE_FIELDS = ("orig_height", "orig_width", "height", "width")
MAX_ERROR_CHARS = 200


class Latents(np.ndarray):
    """A numpy latents array as ``encode`` returns it, with the encode's ``metadata`` (per image: name,
    original size, fit) that ``decode`` sends back to restore the original sizes.

    ``z[i]`` and ``z[a:b]`` keep their images' records; every other derived array (arithmetic,
    ``astype``, ``np.asarray``, fancy indexing) carries none, since the records may not describe it."""

    metadata: dict | None = None

    def __array_finalize__(self, obj) -> None:
        self.metadata = None

    def __getitem__(self, key):
        out = super().__getitem__(key)
        images = (self.metadata or {}).get(IMAGES_KEY)
        if isinstance(out, Latents) and isinstance(key, (int, np.integer, slice)) and self.ndim == 4 and \
                isinstance(images, list) and len(images) == len(self):  # items along the batch axis
            out.metadata = {**self.metadata, IMAGES_KEY: images[key] if isinstance(key, slice) else [images[key]]}
        return out


def metadata_of(latents: Any) -> dict | None:
    """The encode metadata a latents array or tensor carries (None when it has none)."""
    meta = getattr(latents, "metadata", None)
    return meta if isinstance(meta, dict) and meta else None


def attach(array: np.ndarray, meta: dict, torch_module=None):
    """``array`` with ``meta`` as ``.metadata``: a :class:`Latents`, or with ``torch_module`` a tensor."""
    if torch_module is not None:
        tensor = torch_module.from_numpy(array)
        tensor.metadata = meta or None
        return tensor
    out = array.view(Latents)
    out.metadata = meta or None
    return out


# --- safetensors --------------------------------------------------------------------------------------
def safetensors_bytes(array: np.ndarray, meta: dict) -> bytes:
    """A latents safetensors payload (tensor ``latents``) with ``meta`` as its ``dgae`` metadata."""
    return st_save({LATENTS_KEY: np.ascontiguousarray(array)}, metadata={META_KEY: json.dumps(meta)})


def read_safetensors(data: bytes) -> tuple[np.ndarray, dict]:
    """(latents, metadata) of the service's safetensors answer; metadata {} when absent."""
    try:
        array = st_load(data)[LATENTS_KEY]
        header_len = int.from_bytes(data[:HEADER_LEN_BYTES], "little")  # the loaders drop the metadata
        header = json.loads(data[HEADER_LEN_BYTES:HEADER_LEN_BYTES + header_len])
        raw = (header.get(SAFETENSORS_META) or {}).get(META_KEY)
        meta = json.loads(raw) if raw else {}
    except (SafetensorError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise ResponseError(f"the service sent unreadable safetensors latents ({str(exc)[:MAX_ERROR_CHARS]})") \
            from None
    return np.array(array), meta if isinstance(meta, dict) else {}  # a writable copy


# --- fit records ----------------------------------------------------------------------------------------
def fit_records(meta: dict | None, n: int) -> list[dict] | None:
    """The per-latent fit records of ``meta`` checked against ``n`` latents (None: no records)."""
    images = (meta or {}).get(IMAGES_KEY)
    if images is None:
        return None
    if not isinstance(images, list) or len(images) != n:
        raise ArgumentError(f"latents metadata '{IMAGES_KEY}' must be a list with one record per latent ({n})")
    for i, record in enumerate(images):
        sizes = [record.get(k) for k in FIT_SIZE_FIELDS] if isinstance(record, dict) else [None]
        if not all(type(v) is int and v > 0 for v in sizes):
            raise ArgumentError(f"latents metadata {IMAGES_KEY}[{i}]: {', '.join(FIT_SIZE_FIELDS)} must be "
                                "positive integers")
    return images


def restore_size(rgb: np.ndarray, record: dict) -> np.ndarray:
    """Undo a fit on one decoded (H, W, 3) image: crop the padding away or resize back (bicubic, as the
    service does); a crop's lost borders stay lost."""
    h, w = record["orig_height"], record["orig_width"]
    if record.get("fit") == FIT_PAD:
        return rgb[:h, :w]
    if record.get("fit") == FIT_RESIZE and rgb.shape[:2] != (h, w):
        return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BICUBIC))
    return rgb


def restore(images: np.ndarray, records: list[dict] | None) -> np.ndarray | list[np.ndarray]:
    """Decoded uint8 (N, H, W, 3) images at their original sizes: one array when they share a size,
    else a list (one array per image)."""
    if records is None:
        return images
    out = [restore_size(rgb, record) for rgb, record in zip(images, records)]
    if len({a.shape for a in out}) > 1:
        return [np.ascontiguousarray(a) for a in out]
    return np.ascontiguousarray(np.stack(out))
