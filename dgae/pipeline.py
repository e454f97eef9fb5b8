"""What every runtime does around its networks, written once: latent scaling, encode-with-sampling
and the decode sequence (padding, noise buffer, sampler, crop), for requests already checked and
resolved by :mod:`dgae.request` (nothing here checks user input again).

A runtime (the torch model, ONNX Runtime, TensorRT) supplies two primitives:

- ``moments(images) -> (mean, logvar)``: the encoder's raw posterior [N, c, H/f, W/f];
- ``denoise(buf, t) -> v``: the U-Net velocity for the buffer [N, 3 + c, H, W] at times t [N],
  optionally with ``sample(buf, plan) -> image`` replacing the whole sampler loop (an unrolled
  graph, a CUDA graph) when it integrates the same plan.

Seeds, scaling and the sampler are therefore identical on every runtime: the same latent + seed
is the same image everywhere.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .config import DGAEConfig
from .request import DecodeRequest, EncodeRequest
from .sampler import Denoiser, SamplePlan, pad_latents, per_sample_noise, prepare_decode_buffer, run_sampler
from .tiling import TiledDenoiser, TileGrid, tiled_moments

Moments = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Sample = Callable[[torch.Tensor, SamplePlan], torch.Tensor]
DEFAULT_TILE_BATCH = 1  # tiles per network call (backends choose per device: see Backend.tile_batch)


# --- latent scaling ------------------------------------------------------------------------------
def to_public(config: DGAEConfig, z: torch.Tensor) -> torch.Tensor:
    """Raw posterior latents -> public latents: (z - latent_shift) * latent_scale."""
    return (z - config.latent_shift) * config.latent_scale


def from_public(config: DGAEConfig, latents: torch.Tensor) -> torch.Tensor:
    """Public latents -> raw latents (the inverse of :func:`to_public`)."""
    return latents / config.latent_scale + config.latent_shift


# --- encode --------------------------------------------------------------------------------------
def _encode_plane(config: DGAEConfig, height: int, width: int, tile: str) -> tuple[int, int, int, int] | None:
    """(h, w, tile, overlap) in latent units for tiling an H x W encode, or None for one piece."""
    f, t = config.downsample_factor, config.tiling
    if tile == "off" or max(height, width) <= t.encode_tile:
        return None
    return height // f, width // f, t.encode_tile // f, t.encode_overlap // f


def encode_grid(config: DGAEConfig, height: int, width: int, tile: str = "auto") -> TileGrid | None:
    """The latent-space tile grid for encoding an H x W image, or None when it fits one tile."""
    plane = _encode_plane(config, height, width, tile)
    return None if plane is None else TileGrid.build(*plane)


def encode_tiles(config: DGAEConfig, height: int, width: int, tile: str = "auto") -> tuple[int, int, int] | None:
    """(tiles, tile_h, tile_w) in latent units of :func:`encode_grid`'s grid, counted without building
    it (cheap for any size), or None when the image fits one tile."""
    plane = _encode_plane(config, height, width, tile)
    return None if plane is None else TileGrid.count(*plane)


def decode_buffer_size(config: DGAEConfig, height: int, width: int) -> tuple[int, int]:
    """(H, W) of the U-Net buffer a decode of latents ``height`` x ``width`` runs on: padded exactly as
    :func:`dgae.sampler.prepare_decode_buffer` pads (on the meta device, no memory; a 1-row latent
    becomes ``decoder_multiple`` pixel rows)."""
    f = config.downsample_factor
    z = pad_latents(torch.empty(1, config.latent_channels, height, width, device="meta"), f, config.decoder_multiple)
    return z.shape[-2] * f, z.shape[-1] * f


def _decode_plane(config: DGAEConfig, height: int, width: int, tile: str) -> tuple[int, int, int, int] | None:
    t = config.tiling
    if tile == "off" or max(height, width) <= t.decode_tile:
        return None
    return height, width, t.decode_tile, t.decode_overlap


def decode_grid(config: DGAEConfig, height: int, width: int, tile: str = "auto") -> TileGrid | None:
    """The tile grid for the U-Net buffer of an H x W (padded) decode, or None when it fits one tile."""
    plane = _decode_plane(config, height, width, tile)
    return None if plane is None else TileGrid.build(*plane)


def decode_tiles(config: DGAEConfig, height: int, width: int, tile: str = "auto") -> tuple[int, int, int] | None:
    """(tiles, tile_h, tile_w) of :func:`decode_grid`'s grid for an H x W (padded) buffer, counted
    without building it, or None when it fits one tile."""
    plane = _decode_plane(config, height, width, tile)
    return None if plane is None else TileGrid.count(*plane)


def encode_moments(config: DGAEConfig, moments: Moments, images: torch.Tensor, tile: str = "auto",
                   tile_batch: int = DEFAULT_TILE_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw posterior (mean, logvar) of images [N, 3, H, W], tiled when larger than a tile."""
    grid = encode_grid(config, *images.shape[-2:], tile)
    if grid is None:
        return moments(images)
    return tiled_moments(moments, images, grid, config.downsample_factor, tile_batch)


def encode(config: DGAEConfig, moments: Moments, req: EncodeRequest,
           tile_batch: int = DEFAULT_TILE_BATCH) -> torch.Tensor:
    """A checked request's images [N, 3, H, W] in [-1, 1] -> public latents [N, c, H/f, W/f] (in the
    moments' dtype). ``sample`` draws the reparameterisation noise of item i from its own seed, so
    an item encodes the same alone or in any batch. Images larger than a tile (``tile="auto"``)
    are encoded as overlapping tiles of ``tile_batch`` per call, blended in latent space."""
    mean, logvar = encode_moments(config, moments, req.images, req.tile, tile_batch)
    z = sample_posterior(mean, logvar, req.seeds) if req.mode == "sample" else mean
    return to_public(config, z)


def sample_posterior(mean: torch.Tensor, logvar: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """Raw posterior moments [N, c, h, w] -> raw latents mean + std * noise, item i's noise drawn
    from seeds[i] (the encode-time sampling; readers of stored moments resample with it too)."""
    noise = per_sample_noise(list(seeds), tuple(mean.shape[1:]), device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * noise


# --- decode --------------------------------------------------------------------------------------
def decode(config: DGAEConfig, denoise: Denoiser, req: DecodeRequest, sample: Sample | None = None,
           state_dtype: torch.dtype | None = None, tile_batch: int = DEFAULT_TILE_BATCH,
           device: torch.device | None = None) -> torch.Tensor:
    """A checked request's public latents [N, c, h, w] -> images [N, 3, h*f, w*f] in [-1, 1].

    The sampler state (x_t and the upsampled latent) lives on ``device`` (default: the latents')
    in ``state_dtype`` (default: the latents'); ``sample(buf, plan)`` replaces the eager loop
    when given (its result may be a buffer it reuses, hence the clone). Images larger than a
    decode tile (``tile="auto"``) run the denoiser on overlapping tiles, ``tile_batch`` per call,
    at every step (whole-decode fast paths do not apply then)."""
    buf = decode_buffer(config, req, state_dtype, device)
    h, w = (side * config.downsample_factor for side in req.latents.shape[-2:])
    grid = decode_grid(config, *buf.shape[-2:], req.tile)
    if grid is not None:
        out = run_sampler(TiledDenoiser(denoise, grid, tile_batch), buf, req.plan)
    else:
        out = sample(buf, req.plan) if sample is not None else run_sampler(denoise, buf, req.plan)
    return out[..., :h, :w].clone()


def decode_buffer(config: DGAEConfig, req: DecodeRequest, state_dtype: torch.dtype | None = None,
                  device: torch.device | None = None) -> torch.Tensor:
    """The U-Net buffer [N, 3 + c, H, W] a decode starts from: each item's seeded noise beside its
    raw latent upsampled to pixel size, padded to the U-Net's multiple."""
    latents = req.latents if device is None else req.latents.to(device)
    return prepare_decode_buffer(from_public(config, latents), config.downsample_factor, config.decoder_multiple,
                                 req.seeds, dtype=state_dtype)
