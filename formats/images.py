"""Image decoding/encoding and the size-fit policy shared by the CLI and the service.

Accepts PNG/JPEG/WebP/BMP (anything Pillow opens), RGBA/LA/P (alpha composited on white), L,
16-bit (I;16/I) and CMYK, all converted to 8-bit RGB after applying EXIF orientation. Sides that
are not a multiple of f follow an explicit policy:
- ``error``: refuse; ``pad``: replicate-pad right/bottom (decode crops it back);
- ``crop``: centre-crop down; ``resize``: bicubic resize to the nearest multiple (>= f).
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import PurePath
from typing import Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from dgae.errors import InputError, TooLargeError

# The one home for the image formats the project reads (CLI, service, bulk, training folders)...
# Read: file suffix -> (media type, Pillow format). Decoding accepts only these Pillow formats (JPEG includes
# the multi-picture JPEG cameras write), whether the bytes come from a file, a raw body or a multipart part.
READ_FORMATS = {".png": ("image/png", "PNG"), ".jpg": ("image/jpeg", "JPEG"), ".jpeg": ("image/jpeg", "JPEG"),
                ".webp": ("image/webp", "WEBP"), ".bmp": ("image/bmp", "BMP"), ".gif": ("image/gif", "GIF"),
                ".tif": ("image/tiff", "TIFF"), ".tiff": ("image/tiff", "TIFF"),
                ".ppm": ("image/x-portable-pixmap", "PPM")}
READ_SUFFIXES = frozenset(READ_FORMATS)
MEDIA_TYPE_ALIASES = ("image/jpg", "image/pjpeg", "image/x-ms-bmp", "image/x-portable-anymap")  # seen in the wild
READ_MEDIA_TYPES = tuple(dict.fromkeys([media for media, _ in READ_FORMATS.values()] + list(MEDIA_TYPE_ALIASES)))
PIL_READ_FORMATS = tuple(dict.fromkeys(pil for _, pil in READ_FORMATS.values()))

FitPolicy = Literal["error", "pad", "crop", "resize"]
FIT_POLICIES = ("error", "pad", "crop", "resize")
DEFAULT_MAX_PIXELS = 4096 * 4096
ALPHA_BACKGROUND = (255, 255, 255)
UINT16_MAX = 65535
UINT8_MAX = 255
# ...and the one list of formats images are written in (CLI, bulk decode, service responses, client):
# format name -> Pillow format, its media type, and the file suffixes that ask for it.
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
OUTPUT_MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
OUTPUT_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
LOSSY_FORMATS = ("JPEG", "WEBP")


@dataclass(frozen=True)
class FitInfo:
    """How an image was made to fit: original size, policy, and padding/crop applied (pixels)."""

    orig_height: int
    orig_width: int
    height: int
    width: int
    fit: str
    pad_bottom: int = 0
    pad_right: int = 0
    crop_top: int = 0
    crop_left: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def _image_errors(name: str) -> Iterator[None]:
    """Pillow's failures as typed errors: TooLargeError (pixels) or InputError (undecodable)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except InputError:  # ours, already naming the image
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLargeError(f"{name}: image too large ({exc})") from exc
    except UnidentifiedImageError as exc:  # chained: bulk.preprocess.error_kind tells "not_image" by it
        raise InputError(f"{name}: cannot decode image: not an image in a supported format "
                         f"({', '.join(PIL_READ_FORMATS)})") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{name}: cannot decode image ({type(exc).__name__}: {str(exc)[:200]})") from exc


def _open_checked(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open lazily (Pillow reads only the header) and refuse a size over ``max_pixels`` or empty."""
    img = Image.open(io.BytesIO(data), formats=PIL_READ_FORMATS)
    w, h = img.size
    if w * h > max_pixels:
        raise TooLargeError(f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
    if w < 1 or h < 1:
        raise InputError(f"{name}: empty image")
    return img


def image_size(data: bytes, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the image header alone, no pixel decoded; the same checks as decode_image."""
    with _image_errors(name):
        return _open_checked(data, name, max_pixels).size


def decode_image(data: bytes, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bytes -> uint8 RGB array [H, W, 3]. Raises InputError (undecodable) or TooLargeError (pixels)."""
    with _image_errors(name):
        img = _open_checked(data, name, max_pixels)
        img.load()
    return to_rgb(img)


def to_rgb(img: Image.Image) -> np.ndarray:
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = UINT16_MAX if arr.max() > UINT8_MAX else UINT8_MAX
        gray = np.clip(arr / peak * UINT8_MAX + 0.5, 0, UINT8_MAX).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.clip(np.asarray(img, dtype=np.float64) * UINT8_MAX + 0.5, 0, UINT8_MAX).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (UINT8_MAX,))
        img = Image.alpha_composite(bg, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def load_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from exc
    return decode_image(data, name=str(path), max_pixels=max_pixels)


def fit_image(rgb: np.ndarray, f: int, policy: str = "error") -> tuple[np.ndarray, FitInfo]:
    """Make both sides multiples of f according to ``policy``; record what was done."""
    if policy not in FIT_POLICIES:
        raise InputError(f"fit must be one of {', '.join(FIT_POLICIES)}, got {policy!r}")
    h, w = rgb.shape[:2]
    if h % f == 0 and w % f == 0:
        return rgb, FitInfo(h, w, h, w, policy)
    if policy == "error":
        raise InputError(f"image size {w}x{h} is not a multiple of {f}; use fit=pad|crop|resize")
    if policy == "pad":
        ph, pw = (-h) % f, (-w) % f
        out = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge")
        return out, FitInfo(h, w, h + ph, w + pw, policy, pad_bottom=ph, pad_right=pw)
    if policy == "crop":
        nh, nw = (h // f) * f, (w // f) * f
        if nh == 0 or nw == 0:
            raise InputError(f"image size {w}x{h} is smaller than {f} pixels; cannot crop")
        top, left = (h - nh) // 2, (w - nw) // 2
        return rgb[top:top + nh, left:left + nw], FitInfo(h, w, nh, nw, policy, crop_top=top, crop_left=left)
    nh, nw = max(f, round(h / f) * f), max(f, round(w / f) * f)
    out = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BICUBIC))
    return out, FitInfo(h, w, nh, nw, policy)


def restore_size(rgb: np.ndarray, info: FitInfo | dict | None) -> np.ndarray:
    """Undo a fit on a decoded image: crop the padding away or resize back to the original size."""
    if info is None:
        return rgb
    if isinstance(info, dict):
        known = {f.name for f in fields(FitInfo)}
        info = FitInfo(**{k: v for k, v in info.items() if k in known})
    if info.fit == "pad":
        return rgb[: info.orig_height, : info.orig_width]
    if info.fit == "resize" and (info.height, info.width) != (info.orig_height, info.orig_width):
        return np.asarray(Image.fromarray(rgb).resize((info.orig_width, info.orig_height), Image.BICUBIC))
    return rgb


def to_tensor(rgbs: list[np.ndarray]) -> torch.Tensor:
    """uint8 [H, W, 3] arrays (equal sizes) -> float [N, 3, H, W] in [-1, 1]."""
    arr = np.stack(rgbs).astype(np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).div_(UINT8_MAX / 2).sub_(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3] (round to nearest)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * (UINT8_MAX / 2)).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def output_format(path: str | os.PathLike) -> str:
    """The image format a file name asks for (``x.jpg`` -> ``jpeg``), checked before any work is done;
    an unknown suffix is an InputError naming the accepted ones."""
    suffix = PurePath(path).suffix.lower()
    fmt = OUTPUT_SUFFIXES.get(suffix)
    if fmt is None:
        raise InputError(f"{path}: unknown image suffix {suffix or '(none)'!r}; write one of "
                         f"{', '.join(OUTPUT_SUFFIXES)}")
    return fmt


def encode_image(rgb: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    fmt = fmt.lower()
    pil_fmt = OUTPUT_FORMATS.get(OUTPUT_SUFFIXES.get(f".{fmt}", fmt))
    if pil_fmt is None:
        raise InputError(f"unsupported image format {fmt!r}; one of {', '.join(OUTPUT_FORMATS)}")
    buf = io.BytesIO()
    kwargs = {"quality": int(quality)} if pil_fmt in LOSSY_FORMATS else {}
    Image.fromarray(rgb).save(buf, format=pil_fmt, **kwargs)
    return buf.getvalue()


def resize_tensor(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)
