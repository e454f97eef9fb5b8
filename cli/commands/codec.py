"""Batch encode/decode used by the `encode`, `decode` and `roundtrip` subcommands."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from backends.base import Backend
from dgae.errors import InputError
from formats.images import READ_SUFFIXES, FitInfo, fit_image, load_image, to_tensor, to_uint8
from dgae.sampler import resolve_seeds



def load_images(paths: list[str], f: int, fit: str) -> tuple[list[np.ndarray], list[FitInfo]]:
    rgbs, infos = [], []
    for p in paths:
        rgb, info = fit_image(load_image(p), f, fit)
        rgbs.append(rgb)
        infos.append(info)
    sizes = {r.shape[:2] for r in rgbs}
    if len(sizes) > 1:
        raise InputError(f"images have different sizes after fitting {sorted(sizes)}; one latent file holds "
                         f"one size: encode them separately or use --fit resize on equal-aspect images")
    return rgbs, infos


def encode_batches(backend: Backend, rgbs: list[np.ndarray], mode: str, seeds: list[int],
                   batch_size: int, progress: bool = True, tile: str = "auto") -> torch.Tensor:
    out = []
    for i in tqdm(range(0, len(rgbs), batch_size), desc="encode", disable=not progress or len(rgbs) <= batch_size):
        out.append(backend.encode(to_tensor(rgbs[i:i + batch_size]), mode, seeds[i:i + batch_size], tile))
    return torch.cat(out)


def decode_batches(backend: Backend, latents: torch.Tensor, steps: int | None, seeds: list[int],
                   batch_size: int, progress: bool = True, tile: str = "auto") -> np.ndarray:
    out = []
    for i in tqdm(
        range(0, len(latents), batch_size), desc="decode", disable=not progress or len(latents) <= batch_size
    ):
        out.append(to_uint8(backend.decode(latents[i:i + batch_size], steps, seeds[i:i + batch_size], tile)))
    return np.concatenate(out)


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def output_paths(out: str, n: int, names: list[str] | None = None) -> list[Path]:
    """-o FILE.png for a single image, else a directory of NNNN.png (or <name>.png)."""
    p = Path(out)
    if p.suffix.lower() in READ_SUFFIXES:
        if n != 1:
            raise InputError(f"-o {out} names one image but there are {n}; give a directory")
        return [p]
    p.mkdir(parents=True, exist_ok=True)
    stems = [Path(nm).stem for nm in names] if names and len(set(names)) == n else [f"{i:04d}" for i in range(n)]
    return [p / f"{s}.png" for s in stems]


def seeds_for(seed: int | None, n: int) -> list[int]:
    return resolve_seeds(seed, n)
