"""What every runtime does around its networks, written once: input checks, latent scaling,
encode-with-sampling and the decode sequence (plan, padding, noise buffer, sampler, crop).

A runtime (the torch model, ONNX Runtime, TensorRT) supplies two primitives:

- ``moments(images) -> (mean, logvar)``: the encoder's raw posterior [N, c, H/f, W/f];
- ``denoise(buf, t) -> v``: the U-Net velocity for the buffer [N, 3 + c, H, W] at times t [N],
  optionally with ``sample(buf, plan) -> image`` replacing the whole sampler loop (an unrolled
  graph, a CUDA graph) when it integrates the same plan.

Seeds, scaling and the sampler are therefore identical on every runtime: the same latent + seed
is the same image everywhere.
"""
from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch

from .config import IMAGE_CHANNELS, DGAEConfig
from .errors import InputError
from .sampler import Denoiser, SamplePlan, per_sample_noise, prepare_decode_buffer, resolve_seeds, run_sampler
from .tiling import TiledDenoiser, TileGrid, check_tile_mode, tiled_moments

EncodeMode = Literal["mean", "sample"]
ENCODE_MODES = ("mean", "sample")
Moments = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Sample = Callable[[torch.Tensor, SamplePlan], torch.Tensor]
DEFAULT_TILE_BATCH = 1  # tiles per network call (backends choose per device: see Backend.tile_batch)


# --- input checks --------------------------------------------------------------------------------
def check_images(config: DGAEConfig, images: torch.Tensor) -> None:
    f = config.downsample_factor
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != IMAGE_CHANNELS:
        raise InputError(f"images must be [N, 3, H, W], got {tuple(getattr(images, 'shape', ()))}")
    if images.shape[-2] % f or images.shape[-1] % f:
        raise InputError(f"image size {tuple(images.shape[-2:])} is not a multiple of f={f}")


def check_latents(config: DGAEConfig, latents: torch.Tensor) -> None:
    c = config.latent_channels
    if not isinstance(latents, torch.Tensor) or latents.dim() != 4:
        raise InputError(f"latents must be [N, {c}, h, w], got {tuple(getattr(latents, 'shape', ()))}")
    if latents.shape[1] != c:
        raise InputError(f"latents must be [N, {c}, h, w]: they have {latents.shape[1]} channels and this model "
                         f"expects c={c}")
    if not torch.isfinite(latents).all():
        raise InputError("latents contain NaN or infinite values")


def check_mode(mode: str) -> None:
    if mode not in ENCODE_MODES:
        raise InputError(f"mode must be 'mean' or 'sample', got {mode!r}")


# --- latent scaling ------------------------------------------------------------------------------
def to_public(config: DGAEConfig, z: torch.Tensor) -> torch.Tensor:
    """Raw posterior latents -> public latents: (z - latent_shift) * latent_scale."""
    return (z - config.latent_shift) * config.latent_scale


def from_public(config: DGAEConfig, latents: torch.Tensor) -> torch.Tensor:
    """Public latents -> raw latents (the inverse of :func:`to_public`)."""
    return latents / config.latent_scale + config.latent_shift


# --- encode --------------------------------------------------------------------------------------
def encode_grid(config: DGAEConfig, height: int, width: int, tile: str = "auto") -> TileGrid | None:
    """The latent-space tile grid for encoding an H x W image, or None when it fits one tile."""
    f, t = config.downsample_factor, config.tiling
    if check_tile_mode(tile) == "off" or max(height, width) <= t.encode_tile:
        return None
    return TileGrid.build(height // f, width // f, t.encode_tile // f, t.encode_overlap // f)


def decode_grid(config: DGAEConfig, height: int, width: int, tile: str = "auto") -> TileGrid | None:
    """The tile grid for the U-Net buffer of an H x W (padded) decode, or None when it fits one tile."""
    t = config.tiling
    if check_tile_mode(tile) == "off" or max(height, width) <= t.decode_tile:
        return None
    return TileGrid.build(height, width, t.decode_tile, t.decode_overlap)


def encode_moments(config: DGAEConfig, moments: Moments, images: torch.Tensor, tile: str = "auto",
                   tile_batch: int = DEFAULT_TILE_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw posterior (mean, logvar) of images [N, 3, H, W], tiled when larger than a tile."""
    grid = encode_grid(config, *images.shape[-2:], tile)
    if grid is None:
        return moments(images)
    return tiled_moments(moments, images, grid, config.downsample_factor, tile_batch)


def encode(config: DGAEConfig, moments: Moments, images: torch.Tensor, mode: str = "mean",
           seeds: int | Sequence[int] | None = None, tile: str = "auto",
           tile_batch: int = DEFAULT_TILE_BATCH) -> torch.Tensor:
    """images [N, 3, H, W] in [-1, 1] -> public latents [N, c, H/f, W/f] (in the moments' dtype).
    ``sample`` draws the reparameterisation noise of item i from its own seed (see
    :func:`dgae.sampler.resolve_seeds`), so an item encodes the same alone or in any batch.
    Images larger than a tile (``tile="auto"``) are encoded as overlapping tiles of
    ``tile_batch`` per call, blended in latent space."""
    check_images(config, images)
    check_mode(mode)
    mean, logvar = encode_moments(config, moments, images, tile, tile_batch)
    z = sample_posterior(mean, logvar, resolve_seeds(seeds, len(images))) if mode == "sample" else mean
    return to_public(config, z)


def sample_posterior(mean: torch.Tensor, logvar: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """Raw posterior moments [N, c, h, w] -> raw latents mean + std * noise, item i's noise drawn
    from seeds[i] (the encode-time sampling; readers of stored moments resample with it too)."""
    noise = per_sample_noise(list(seeds), tuple(mean.shape[1:]), device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * noise


# --- decode --------------------------------------------------------------------------------------
def decode(config: DGAEConfig, denoise: Denoiser, latents: torch.Tensor, steps: int | None = None,
           seeds: int | Sequence[int] | None = None, solver: str | None = None, sample: Sample | None = None,
           state_dtype: torch.dtype | None = None, tile: str = "auto",
           tile_batch: int = DEFAULT_TILE_BATCH) -> torch.Tensor:
    """public latents [N, c, h, w] -> images [N, 3, h*f, w*f] in [-1, 1].

    The sampler state (x_t and the upsampled latent) lives in ``state_dtype`` (default: the
    latents'); ``sample(buf, plan)`` replaces the eager loop when given (its result may be a
    buffer it reuses, hence the clone). Images larger than a decode tile (``tile="auto"``) run
    the denoiser on overlapping tiles, ``tile_batch`` per call, at every step (whole-decode fast
    paths do not apply then)."""
    check_latents(config, latents)
    plan = SamplePlan.build(config.sampler, steps, solver)
    f = config.downsample_factor
    h, w = latents.shape[-2] * f, latents.shape[-1] * f
    buf = prepare_decode_buffer(from_public(config, latents), f, config.decoder_multiple,
                                resolve_seeds(seeds, len(latents)), dtype=state_dtype)
    grid = decode_grid(config, *buf.shape[-2:], tile)
    if grid is not None:
        out = run_sampler(TiledDenoiser(denoise, grid, tile_batch), buf, plan)
    else:
        out = sample(buf, plan) if sample is not None else run_sampler(denoise, buf, plan)
    return out[..., :h, :w].clone()
