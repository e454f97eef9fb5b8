"""A synthetic photo set for the training tests (distillation, the default's stage chain):
gradients with flat discs and mild noise, split into train / val by photo in a manifest. The
``gradient_photos`` fixture in conftest.py writes it once per session."""
from __future__ import annotations

import json

import numpy as np

PHOTO_SIZE = (96, 128)  # H, W
TRAIN_PHOTOS, VAL_PHOTOS = 6, 2
DISCS_PER_PHOTO = 3
DISC_RADIUS = (10.0, 30.0)
PHOTO_NOISE_STD = 4.0  # 8-bit levels of texture on top of the gradient and discs
PHOTO_SEED = 0


def make_photo_set(root) -> None:
    """Gradients with a few flat discs and mild noise, in manifest form (train / val by photo)."""
    from PIL import Image

    rng = np.random.default_rng(PHOTO_SEED)
    h, w = PHOTO_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    files = []
    for i in range(TRAIN_PHOTOS + VAL_PHOTOS):
        angle = rng.uniform(0, 2 * np.pi)
        g = np.cos(angle) * xx / w + np.sin(angle) * yy / h
        g = ((g - g.min()) / (g.max() - g.min()))[..., None]
        img = rng.uniform(0, 255, 3) * (1 - g) + rng.uniform(0, 255, 3) * g
        for _ in range(DISCS_PER_PHOTO):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(*DISC_RADIUS)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
        img += rng.normal(0, PHOTO_NOISE_STD, img.shape)
        name = f"p{i}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name)
        files.append({"file": name, "split": "train" if i < TRAIN_PHOTOS else "val"})
    (root / "manifest.json").write_text(json.dumps({"version": 1, "files": files}))
