"""Preprocessing named as latent-diffusion users know it, and the per-item load that DataLoader
workers run (read bytes, decode, resize/crop, fit, optional mirror).

- ``center_crop=S, crop_style="adm"``: ADM's ``center_crop_arr`` (the DiT / SiT / REPA /
  LightningDiT convention): halve with a box filter while the short side is >= 2S, bicubic-resize
  the short side to S, centre-crop S x S;
- ``resize=R``: bicubic-resize the short side to R (aspect kept); then ``center_crop=S,
  crop_style="center"`` centre-crops S x S (torchvision's Resize + CenterCrop);
- ``fit``: what :func:`formats.images.fit_image` does to sides that are not multiples of f
  (native sizes: ``pad`` is decoded back to the original size);
- ``flip``: also the left-right mirror of the preprocessed image (MAR's ``moments_flip``).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from dgae.errors import InputError, TooLargeError
from formats.images import DEFAULT_MAX_PIXELS, FIT_POLICIES, FitInfo, decode_image, fit_image

from .sources import Item, read_item_bytes

CROP_STYLES = ("adm", "center")
ADM_DOWNSCALE_FACTOR = 2  # ADM halves while the short side is at least twice the target
# Pillow names the in-memory file by its address ("<_io.BytesIO object at 0x7f...>"): reasons must
# be the same bytes on every run, so that is replaced
OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-fA-F]+>")

# error kinds in errors.jsonl
EMPTY, NOT_IMAGE, CORRUPT, TOO_LARGE, BAD_SIZE, UNREADABLE, BAD_SOURCE = (
    "empty", "not_image", "corrupt", "too_large", "bad_size", "unreadable", "bad_source")


@dataclass(frozen=True)
class Preprocess:
    resize: int | None = None
    center_crop: int | None = None
    crop_style: str = "adm"
    fit: str = "pad"
    flip: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS

    def validate(self) -> "Preprocess":
        if self.crop_style not in CROP_STYLES:
            raise InputError(f"crop style must be one of {', '.join(CROP_STYLES)}, got {self.crop_style!r}")
        if self.fit not in FIT_POLICIES:
            raise InputError(f"fit must be one of {', '.join(FIT_POLICIES)}, got {self.fit!r}")
        for name in ("resize", "center_crop"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.crop_style == "adm" and self.resize is not None and self.center_crop is not None:
            raise InputError("the ADM centre crop resizes by itself: give --center-crop alone, or --crop-style "
                             "center to resize first")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        parts = []
        if self.resize:
            parts.append(f"resize short side {self.resize} (bicubic)")
        if self.center_crop:
            parts.append(f"{'ADM ' if self.crop_style == 'adm' else ''}center crop {self.center_crop}")
        parts.append(f"fit {self.fit}")
        if self.flip:
            parts.append("+ horizontal flip")
        return ", ".join(parts)


def adm_center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """ADM's center_crop_arr (guided-diffusion, as used by DiT/SiT/REPA)."""
    img = Image.fromarray(rgb)
    while min(*img.size) >= ADM_DOWNSCALE_FACTOR * size:
        img = img.resize(tuple(x // ADM_DOWNSCALE_FACTOR for x in img.size), resample=Image.BOX)
    scale = size / min(*img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


def resize_short_side(rgb: np.ndarray, size: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = size / min(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(new, resample=Image.BICUBIC))


def center_crop(rgb: np.ndarray, size: int, source: str) -> np.ndarray:
    h, w = rgb.shape[:2]
    if h < size or w < size:
        raise InputError(f"{source}: {w}x{h} is smaller than the {size}x{size} centre crop")
    top, left = (h - size) // 2, (w - size) // 2
    return rgb[top:top + size, left:left + size]


def preprocess(rgb: np.ndarray, pre: Preprocess, f: int, source: str
               ) -> tuple[np.ndarray, FitInfo, np.ndarray | None]:
    """Decoded RGB -> (model input, its fit record, the mirrored model input or None)."""
    if pre.center_crop and pre.crop_style == "adm":
        rgb = adm_center_crop(rgb, pre.center_crop)
    else:
        if pre.resize:
            rgb = resize_short_side(rgb, pre.resize)
        if pre.center_crop:
            rgb = center_crop(rgb, pre.center_crop, source)
    try:
        fitted, info = fit_image(np.ascontiguousarray(rgb), f, pre.fit)
        flipped = fit_image(np.ascontiguousarray(rgb[:, ::-1]), f, pre.fit)[0] if pre.flip else None
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from exc
    return np.ascontiguousarray(fitted), info, flipped if flipped is None else np.ascontiguousarray(flipped)


@dataclass
class Prepared:
    """A worker's result for one item: the model input(s), or the reason it cannot be used."""

    item: Item
    rgb: np.ndarray | None = None
    info: FitInfo | None = None
    rgb_flip: np.ndarray | None = None
    orig_size: tuple[int, int] | None = None  # (width, height) as decoded
    error_kind: str | None = None
    error: str | None = None


def error_kind(exc: InputError) -> str:
    if isinstance(exc, TooLargeError):
        return TOO_LARGE
    if isinstance(exc.__cause__, UnidentifiedImageError):
        return NOT_IMAGE
    return CORRUPT


def prepare_item(item: Item, pre: Preprocess, f: int) -> Prepared:
    """Everything a DataLoader worker does for one item; never raises for a bad input."""
    if item.error:
        return Prepared(item, error_kind=BAD_SOURCE, error=item.error)
    try:
        data = read_item_bytes(item)
    except InputError as exc:
        return Prepared(item, error_kind=UNREADABLE, error=str(exc))
    if not data:
        return Prepared(item, error_kind=EMPTY, error=f"{item.source}: zero-byte file")
    try:
        rgb = decode_image(data, name=item.source, max_pixels=pre.max_pixels)
    except InputError as exc:
        return Prepared(item, error_kind=error_kind(exc), error=OBJECT_REPR.sub("<image bytes>", str(exc)))
    try:
        fitted, info, flipped = preprocess(rgb, pre, f, item.source)
    except InputError as exc:
        return Prepared(item, error_kind=BAD_SIZE, error=str(exc))
    return Prepared(item, fitted, info, flipped, (rgb.shape[1], rgb.shape[0]))
