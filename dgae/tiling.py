"""Tiled decode and encode: any image size in bounded memory and linear time.

Decode (the MultiDiffusion approach): at every sampler step the denoiser runs on overlapping
tiles of the full-size x_t (with the upsampled latent beside it) and the velocities are blended
with a smooth window; the sampler state and its noise stay global (one noise tensor per seed), so
tiling changes only how each velocity is computed. Encode: overlapping image tiles, their
posterior moments blended in latent space (sampling noise is drawn afterwards, globally).

Every tile of an image has one shape (``min(side, tile)`` per axis) and starts on a multiple of
the alignment, so tiles of any image batch together, a runtime sees a few fixed shapes (static
TensorRT profiles), and a tile's result does not depend on which tiles share its batch.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .config import IMAGE_CHANNELS

Moments = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GRID_CACHE_SIZE = 64  # distinct (size, tile, overlap) grids kept


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` covering ``[0, length)`` with at least ``overlap`` shared
    between neighbours; the last tile ends at ``length`` (one tile when ``length <= tile``)."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _ramp(width: int) -> torch.Tensor:
    """Raised-cosine ramp of ``width`` samples rising from near 0 to near 1 (never exactly 0)."""
    pos = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    return 0.5 - 0.5 * torch.cos(math.pi * pos)


def axis_weights(starts: list[int], size: int) -> list[torch.Tensor]:
    """One 1-D blend window per tile: 1 inside, ramping over the span it shares with each
    neighbour (the ramps of two neighbours sum to 1 where they overlap), 1 at the image borders."""
    out = []
    for i, s in enumerate(starts):
        w = torch.ones(size, dtype=torch.float64)
        if i > 0:
            lead = starts[i - 1] + size - s  # shared with the previous tile
            w[:lead] *= _ramp(lead)
        if i + 1 < len(starts):
            trail = s + size - starts[i + 1]  # shared with the next tile
            w[size - trail:] *= _ramp(trail).flip(0)
        out.append(w)
    return out


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``(tile_h, tile_w)`` over an ``(height, width)`` plane; weights sum to 1 everywhere."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    boxes: tuple[tuple[int, int], ...]  # (top, left) of each tile
    weights: torch.Tensor  # [tiles, tile_h, tile_w] fp32, normalised

    @classmethod
    @functools.lru_cache(maxsize=GRID_CACHE_SIZE)  # immutable: a size seen again costs nothing
    def build(cls, height: int, width: int, tile: int, overlap: int) -> "TileGrid":
        ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
        th, tw = min(height, tile), min(width, tile)
        wy, wx = axis_weights(ys, th), axis_weights(xs, tw)
        boxes = tuple((y, x) for y in ys for x in xs)
        raw = torch.stack([a[:, None] * b[None, :] for a in wy for b in wx])  # [T, th, tw]
        total = torch.zeros(height, width, dtype=torch.float64)
        for (y, x), w in zip(boxes, raw):
            total[y:y + th, x:x + tw] += w
        norm = torch.stack([total[y:y + th, x:x + tw] for y, x in boxes])
        return cls(height, width, th, tw, boxes, (raw / norm).float())

    @staticmethod
    def count(height: int, width: int, tile: int, overlap: int) -> tuple[int, int, int]:
        """(tiles, tile_h, tile_w) of :meth:`build`'s grid, without building it (any size, no memory)."""
        tiles = len(tile_starts(height, tile, overlap)) * len(tile_starts(width, tile, overlap))
        return tiles, min(height, tile), min(width, tile)

    @property
    def tiled(self) -> bool:
        return len(self.boxes) > 1

    def scaled(self, f: int) -> "TileGrid":
        """The same tiles in units ``f`` times smaller (latent grid -> its image grid; the weights
        stay those of this grid)."""
        return TileGrid(self.height * f, self.width * f, self.tile_h * f, self.tile_w * f,
                        tuple((y * f, x * f) for y, x in self.boxes), self.weights)

    def crops(self, x: torch.Tensor, jobs: list[tuple[int, int]]) -> torch.Tensor:
        """Stack the crops ``x[n, :, box]`` for ``jobs`` = [(item n, tile index)]."""
        th, tw = self.tile_h, self.tile_w
        return torch.stack([x[n, :, self.boxes[i][0]:self.boxes[i][0] + th, self.boxes[i][1]:self.boxes[i][1] + tw]
                            for n, i in jobs])

    def accumulate(self, out: torch.Tensor, parts: torch.Tensor, jobs: list[tuple[int, int]]) -> None:
        """out[n, :, box] += weight * part for each job (out fp32)."""
        th, tw = self.tile_h, self.tile_w
        for part, (n, i) in zip(parts, jobs):
            y, x = self.boxes[i]
            out[n, :, y:y + th, x:x + tw] += part.float() * self.weights[i].to(out.device)


def _jobs(n: int, grid: TileGrid, batch: int) -> list[list[tuple[int, int]]]:
    jobs = [(item, i) for item in range(n) for i in range(len(grid.boxes))]
    return [jobs[k:k + batch] for k in range(0, len(jobs), batch)]


class TiledDenoiser:
    """``denoise(buf, t)`` over tiles of a full-size buffer [N, 3 + c, H, W], velocities blended."""

    def __init__(self, denoise: Denoiser, grid: TileGrid, batch: int):
        self.denoise, self.grid, self.batch = denoise, grid, max(1, batch)

    def __call__(self, buf: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = torch.zeros((buf.shape[0], IMAGE_CHANNELS, *buf.shape[2:]), dtype=torch.float32, device=buf.device)
        for jobs in _jobs(buf.shape[0], self.grid, self.batch):
            tiles = self.grid.crops(buf, jobs)  # [B, 3 + c, th, tw]
            self.grid.accumulate(v, self.denoise(tiles, t[[n for n, _ in jobs]]), jobs)
        return v


def tiled_moments(moments: Moments, images: torch.Tensor, grid: TileGrid, f: int,
                  batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mean, logvar) of images [N, 3, H, W] from overlapping tiles blended in latent
    space; ``grid`` is in latent units (the image tiles are ``f`` times larger)."""
    n = images.shape[0]
    image_grid = grid.scaled(f)
    mean = logvar = None
    for jobs in _jobs(n, grid, max(1, batch)):
        m, lv = moments(image_grid.crops(images, jobs))
        if mean is None:
            shape = (n, m.shape[1], grid.height, grid.width)
            mean = torch.zeros(shape, dtype=torch.float32, device=m.device)
            logvar = torch.zeros(shape, dtype=torch.float32, device=m.device)
        grid.accumulate(mean, m, jobs)
        grid.accumulate(logvar, lv, jobs)
    return mean, logvar



def blend_lines(starts: list[int], size: int) -> list[int]:
    """Pixel positions where tiles meet along one axis: each interior tile edge and the middle of
    each overlap (where a seam would show if the blend failed)."""
    lines = set()
    for prev, nxt in zip(starts, starts[1:]):
        end = prev + size
        lines.update({nxt, end - 1, (nxt + end) // 2})
    return sorted(lines)


def seam_ratio(rgb: np.ndarray, grid: TileGrid) -> float:
    """Mean absolute pixel step across the grid's blend lines / the mean step elsewhere, for an
    image [H, W, 3] decoded with ``grid`` (pixel units). 1.0: the lines are invisible."""
    img = rgb.astype(np.float64)
    dx = np.abs(np.diff(img, axis=1)).mean(axis=(0, 2))  # step between column x and x + 1
    dy = np.abs(np.diff(img, axis=0)).mean(axis=(1, 2))
    xs = blend_lines(sorted({x for _, x in grid.boxes}), grid.tile_w)
    ys = blend_lines(sorted({y for y, _ in grid.boxes}), grid.tile_h)
    on = [dx[x - 1] for x in xs if 0 < x < len(dx) + 1] + [dy[y - 1] for y in ys if 0 < y < len(dy) + 1]
    off_x = np.delete(dx, [x - 1 for x in xs if 0 < x <= len(dx)])
    off_y = np.delete(dy, [y - 1 for y in ys if 0 < y <= len(dy)])
    return float(np.mean(on) / np.mean(np.concatenate([off_x, off_y])))
