"""Write tests/fixtures/base_latent.npz: a photo crop, the latent that a checkpoint's encoder makes
of it, and that checkpoint's own decode scores (PSNR at 1 and at its default steps, seed 0).

Made once with the 2-step base model (the bundled default until the one-step default replaced
it) so that tests/test_train_default.py can show that latents users made with it stay valid:
``python scripts/make_encoder_fixture.py --checkpoint BASE.safetensors``. The photo is
scikit-image's ``coffee`` (CC0, Rachel Michetti), a validation photo of ``make data``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from dgae.checkpoint import load_checkpoint
from dgae.hashing import file_sha256
from evaluation.evaluate import quantize
from training.metrics.image_quality import psnr

CROP = 128  # px, a centre crop at the photo's own resolution
SEED = 0
OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "base_latent.npz"


def centre_crop(image: np.ndarray, size: int = CROP) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(image[top:top + size, left:left + size, :3])


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def psnr_8bit(decoded: torch.Tensor, image: np.ndarray) -> float:
    """PSNR (dB) of a decode rounded to 8-bit levels, as ``dgae eval`` scores it."""
    return float(psnr(quantize(decoded[:1]), to_tensor(image))[0])


def main() -> None:
    import skimage.data  # noqa: PLC0415  (dev only: the fixture is committed)

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    model = load_checkpoint(args.checkpoint).eval()
    image = centre_crop(skimage.data.coffee())
    with torch.no_grad():
        latent = model.encode(to_tensor(image))
        scores = {steps: psnr_8bit(model.decode(latent, steps=steps, seeds=SEED), image)
                  for steps in (1, model.config.sampler.default_steps)}
    np.savez_compressed(args.out, image=image, latent=latent.numpy(), base_sha256=file_sha256(args.checkpoint),
                        psnr_1step=scores[1], psnr_default=scores[model.config.sampler.default_steps],
                        default_steps=model.config.sampler.default_steps)
    print(f"wrote {args.out}: latent {tuple(latent.shape)}, PSNR {scores}")


if __name__ == "__main__":
    main()
