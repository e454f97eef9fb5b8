"""Benchmark inputs: real photos (scikit-image's bundled sample photos) centre-cropped and resized
to the benchmark size, or seeded uniform noise where scikit-image is absent. Never zeros."""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

# RGB photographs shipped inside scikit-image (public domain / CC0, see skimage/data/README.txt)
PHOTO_FILES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
               "hubble_deep_field.jpg", "retina.jpg", "ihc.png")
NOISE_SEED = 1234


def photo_dir() -> Path | None:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    return folder if folder.is_dir() else None


def _square(img: Image.Image, size: int) -> np.ndarray:
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.convert("RGB").crop((left, top, left + side, top + side))
    return np.asarray(img.resize((size, size), Image.BICUBIC))


def photo_arrays(n: int, size: int) -> tuple[list[np.ndarray], str]:
    """n uint8 RGB arrays [size, size, 3] and the source ('photos' or 'noise')."""
    folder = photo_dir()
    files = [folder / name for name in PHOTO_FILES if folder and (folder / name).is_file()] if folder else []
    if not files:
        log.warning("scikit-image photos not found: benchmarking on seeded uniform noise")
        rng = np.random.default_rng(NOISE_SEED)
        return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)], "noise"
    photos = [_square(Image.open(files[i % len(files)]), size) for i in range(min(n, len(files)))]
    return [photos[i % len(photos)] for i in range(n)], "photos"


def image_batch(n: int, size: int) -> tuple[torch.Tensor, str]:
    """float [n, 3, size, size] in [-1, 1] and the source label."""
    from formats.images import to_tensor  # noqa: PLC0415

    arrays, source = photo_arrays(n, size)
    return to_tensor(arrays), source
