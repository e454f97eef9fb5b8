"""Image datasets and loaders for tokenizer training.

``ImageFolderDataset`` reads either
  * a photo set built by ``training.data.fetch`` (pass its folder or its ``manifest.json``; ``split``
    selects the manifest's "train"/"val" photos, ``None`` takes all), or
  * any image folder, recursively (.jpg/.jpeg/.png/.webp), e.g. ImageNet. If ``split`` is given and
    ``root/split`` is a folder, that subfolder is used (``train/``, ``val/`` layouts).

Each item is a float32 tensor [3, crop_size, crop_size] in [-1, 1] (no labels).

Decoding: every image is decoded once per process and pre-resized so that its *short* side is at
most ``max_side`` (JPEGs use DCT-domain draft decoding, so a 20 MP photo decodes at a fraction of
the cost) and at least ``crop_size`` (small images are upscaled). The uint8 result is kept in a
per-process LRU bounded by ``cache_bytes``; with a few large photos the whole set stays resident,
and with ImageNet the cache simply misses. Worker processes each hold their own cache, so the
loader keeps workers persistent.

Cropping: ``crops_per_image`` items per image (an epoch sees every image that many times).
  * train: a random square crop + random horizontal flip. With ``scale_range=(lo, hi)`` the crop
    side is ``crop_size * s``, s ~ U[lo, hi] (clipped to the image), resized back to
    ``crop_size`` -- s > 1 trades detail for context (scale jitter). Randomness comes from
    torch's RNG, which the DataLoader seeds per worker (see :func:`make_loader`).
  * eval: deterministic crops on a near-square grid spanning the image (one crop = centre crop).
"""
from __future__ import annotations

import json
import logging
import math
import random
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from formats.images import READ_SUFFIXES
from dgae.errors import ConfigError, InputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = READ_SUFFIXES
MANIFEST_NAME = "manifest.json"
MANIFEST_SPLITS = ("train", "val")
DEFAULT_CROP_SIZE = 256
DEFAULT_MAX_SIDE = 1024  # cached short side; photos are cropped from this scale
DEFAULT_CACHE_BYTES = 1 << 30  # per process
FLIP_PROBABILITY = 0.5
PIXEL_MAX = 255.0
RANK_SEED_STRIDE = 1_000_003  # separates the loader seeds of distributed ranks
WORKER_SEED_MODULUS = 2**32  # numpy / random accept 32-bit seeds


def _manifest_files(manifest_path: Path, split: str | None) -> list[Path]:
    if split is not None and split not in MANIFEST_SPLITS:
        raise ConfigError(f"unknown split {split!r}; the manifest has {MANIFEST_SPLITS}")
    try:
        entries = json.loads(manifest_path.read_text())["files"]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise InputError(f"cannot read photo manifest {manifest_path}: {exc}") from exc
    return [manifest_path.parent / e["file"] for e in entries if split is None or e["split"] == split]


def _folder_files(root: Path, split: str | None) -> list[Path]:
    if split is not None and (root / split).is_dir():
        root = root / split
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def resolve_files(root_or_manifest: str | Path, split: str | None) -> list[Path]:
    """The image files a dataset over ``root_or_manifest`` / ``split`` would read, in order."""
    path = Path(root_or_manifest)
    if path.is_file() and path.suffix == ".json":
        return _manifest_files(path, split)
    if (path / MANIFEST_NAME).is_file():
        return _manifest_files(path / MANIFEST_NAME, split)
    if path.is_dir():
        return _folder_files(path, split)
    raise InputError(f"{path} is neither an image folder nor a manifest")


def grid_offsets(index: int, count: int, height: int, width: int, crop: int) -> tuple[int, int]:
    """Top-left of crop ``index`` of ``count`` laid on a near-square grid spanning the image."""
    rows = max(1, math.isqrt(count))
    cols = math.ceil(count / rows)
    row, col = divmod(index, cols)
    top = round(row * (height - crop) / (rows - 1)) if rows > 1 else (height - crop) // 2
    left = round(col * (width - crop) / (cols - 1)) if cols > 1 else (width - crop) // 2
    return top, left


class ImageFolderDataset(Dataset):
    """Crops from an image folder or a ``training.data.fetch`` manifest; see the module docstring."""

    def __init__(self, root_or_manifest: str | Path, split: str | None = None, crop_size: int = DEFAULT_CROP_SIZE,
                 train: bool = True, crops_per_image: int = 1, max_side: int = DEFAULT_MAX_SIDE,
                 scale_range: tuple[float, float] | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if crop_size <= 0 or crops_per_image <= 0:
            raise ConfigError(f"crop_size and crops_per_image must be positive, got {crop_size}, {crops_per_image}")
        if max_side < crop_size:
            raise ConfigError(f"max_side ({max_side}) must be >= crop_size ({crop_size})")
        if scale_range is not None and not 0 < scale_range[0] <= scale_range[1]:
            raise ConfigError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
        self.files = resolve_files(root_or_manifest, split)
        if not self.files:
            raise InputError(f"no images found in {root_or_manifest} (split={split!r})")
        self.crop_size, self.train, self.crops_per_image = crop_size, train, crops_per_image
        self.max_side, self.scale_range, self.cache_bytes = max_side, scale_range, cache_bytes
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._cached_bytes = 0
        log.info("%d images from %s (split=%s, train=%s)", len(self.files), root_or_manifest, split, train)

    def __len__(self) -> int:
        return len(self.files) * self.crops_per_image

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # workers start with an empty cache of their own
        state["_cache"], state["_cached_bytes"] = OrderedDict(), 0
        return state

    # ------------------------------------------------------------------ decoding + cache

    def _decode(self, path: Path) -> torch.Tensor:
        """uint8 [3, h, w] with crop_size <= min(h, w) <= max_side (aspect ratio kept)."""
        from PIL import Image, ImageOps

        try:
            with Image.open(path) as im:
                scale = self.max_side / min(im.size)
                if scale < 1.0:  # JPEG: decode directly at >= the target size (DCT scaling)
                    im.draft("RGB", (math.ceil(im.width * scale), math.ceil(im.height * scale)))
                rgb = ImageOps.exif_transpose(im).convert("RGB")
        except OSError as exc:
            raise InputError(f"cannot decode image {path}: {exc}") from exc
        short = min(rgb.size)
        target = min(max(short, self.crop_size), self.max_side)
        if target != short:
            size = (max(target, round(rgb.width * target / short)), max(target, round(rgb.height * target / short)))
            rgb = rgb.resize(size, Image.BICUBIC)
        return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()  # HWC -> [3, h, w]

    def _load(self, image_index: int) -> torch.Tensor:
        cached = self._cache.get(image_index)
        if cached is not None:
            self._cache.move_to_end(image_index)
            return cached
        img = self._decode(self.files[image_index])
        size = img.numel()  # uint8: one byte per element
        if size <= self.cache_bytes:
            while self._cached_bytes + size > self.cache_bytes:
                _, evicted = self._cache.popitem(last=False)
                self._cached_bytes -= evicted.numel()
            self._cache[image_index] = img
            self._cached_bytes += size
        return img

    # ------------------------------------------------------------------ cropping

    def _random_crop(self, img: torch.Tensor) -> torch.Tensor:
        _, h, w = img.shape
        side = self.crop_size
        if self.scale_range is not None:
            s = random_uniform(*self.scale_range)
            side = max(1, min(round(self.crop_size * s), h, w))
        top = int(torch.randint(0, h - side + 1, ()))
        left = int(torch.randint(0, w - side + 1, ()))
        patch = img[:, top:top + side, left:left + side].float()  # [3, side, side]
        if side != self.crop_size:
            patch = F.interpolate(patch[None], size=(self.crop_size, self.crop_size), mode="bicubic",
                                  antialias=True, align_corners=False)[0].clamp(0.0, PIXEL_MAX)
        if float(torch.rand(())) < FLIP_PROBABILITY:
            patch = patch.flip(-1)
        return patch

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(index)
        image_index, crop_index = divmod(index, self.crops_per_image)
        img = self._load(image_index)
        if self.train:
            patch = self._random_crop(img)
        else:
            top, left = grid_offsets(crop_index, self.crops_per_image, img.shape[1], img.shape[2], self.crop_size)
            patch = img[:, top:top + self.crop_size, left:left + self.crop_size].float()
        return patch / (PIXEL_MAX / 2) - 1.0  # [0, 255] -> [-1, 1]


def random_uniform(lo: float, hi: float) -> float:
    """U[lo, hi] from torch's RNG (seeded per DataLoader worker)."""
    return lo + (hi - lo) * float(torch.rand(()))


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` from the per-worker torch seed the DataLoader already set."""
    seed = torch.initial_seed() % WORKER_SEED_MODULUS
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, workers: int, distributed: bool, seed: int,
                shuffle: bool | None = None, drop_last: bool | None = None, pin_memory: bool = False) -> DataLoader:
    """A reproducible DataLoader over ``dataset``.

    ``shuffle`` and ``drop_last`` default to ``dataset.train``. With ``distributed`` a
    DistributedSampler shards the data (call ``loader.sampler.set_epoch(epoch)`` each epoch);
    the torch process group must already be initialised. The shuffling generator and the worker
    seeds derive from ``seed`` (and the rank), so a run is reproducible for a fixed ``workers``.
    With ``workers == 0`` augmentation uses the global torch RNG (seed it with torch.manual_seed).
    """
    if batch_size <= 0 or workers < 0:
        raise ConfigError(f"batch_size must be > 0 and workers >= 0, got {batch_size}, {workers}")
    is_train = bool(getattr(dataset, "train", True))
    shuffle = is_train if shuffle is None else shuffle
    drop_last = is_train if drop_last is None else drop_last
    sampler, rank = None, 0
    if distributed:
        import torch.distributed as dist
        from torch.utils.data.distributed import DistributedSampler

        if not (dist.is_available() and dist.is_initialized()):
            raise ConfigError("make_loader(distributed=True) needs an initialised torch.distributed process group")
        rank = dist.get_rank()
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    generator = torch.Generator().manual_seed(seed + rank * RANK_SEED_STRIDE)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, worker_init_fn=seed_worker, generator=generator, drop_last=drop_last,
                      persistent_workers=workers > 0, pin_memory=pin_memory)
