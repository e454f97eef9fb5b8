"""Batch encode/decode used by the `encode`, `decode` and `roundtrip` subcommands."""
from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from backends.base import Backend
from dgae.errors import InputError, OutputError
from formats.images import FitInfo, fit_image, load_image, output_format, to_tensor, to_uint8
from dgae.sampler import resolve_seeds

DEFAULT_IMAGE_FORMAT = "png"


def load_images(paths: list[str], f: int, fit: str,
                same_size: bool = True) -> tuple[list[np.ndarray], list[FitInfo]]:
    """Read and fit every image; with ``same_size`` (one latent file) they must share one fitted size."""
    rgbs, infos = [], []
    for p in paths:
        rgb, info = fit_image(load_image(p), f, fit)
        rgbs.append(rgb)
        infos.append(info)
    sizes = {r.shape[:2] for r in rgbs}
    if same_size and len(sizes) > 1:
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


def size_groups(rgbs: list[np.ndarray]) -> list[list[int]]:
    """Indices of the images grouped by size (each group can be one batch), in first-seen order."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, rgb in enumerate(rgbs):
        groups[rgb.shape[:2]].append(i)
    return list(groups.values())


def check_writable_folder(folder: Path, out: str) -> None:
    if not folder.is_dir():
        raise InputError(f"-o {out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"-o {out}: folder {folder} is not writable")


def output_paths(out: str, n: int, names: list[str] | None = None) -> list[Path]:
    """-o FILE.png|.jpg|.webp for a single image, else a directory of NNNN.png (or <name>.png).

    Called before any model work: an unknown suffix, a missing or read-only parent folder, or one
    file name for several images fails here, in one line, instead of after minutes of decoding."""
    p = Path(out)
    if p.suffix and not p.is_dir():  # a file name: its suffix picks the format
        output_format(p)
        if n != 1:
            raise InputError(f"-o {out} names one image but there are {n}; give a directory")
        check_writable_folder(p.parent, out)
        return [p]
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"-o {out}: cannot create the folder ({exc.strerror})") from None
    check_writable_folder(p, out)
    stems = [Path(nm).stem for nm in names] if names and len(set(names)) == n else [f"{i:04d}" for i in range(n)]
    return [p / f"{s}.{DEFAULT_IMAGE_FORMAT}" for s in stems]


def latents_output(out: str) -> Path:
    """The latents file ``-o`` names, its folder created and checked before any model work."""
    p = Path(out)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"-o {out}: cannot create the folder {p.parent} ({exc.strerror})") from None
    check_writable_folder(p.parent, out)
    return p


def write_output(path: Path, data: bytes) -> None:
    """Write one output file; a full disk or vanished folder is a one-line error, not a traceback."""
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None


def seeds_for(seed: int | None, n: int) -> list[int]:
    return resolve_seeds(seed, n)
