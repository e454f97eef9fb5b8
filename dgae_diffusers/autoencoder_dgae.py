"""``AutoencoderDGAE``: a DGAE model as a diffusers autoencoder (``ModelMixin`` + ``ConfigMixin``).

It has the conventions of diffusers' ``AutoencoderKL`` / ``ConsistencyDecoderVAE``:
``encode(x).latent_dist`` (``.mode()``, ``.sample(generator)``), ``decode(z, generator=...,
num_inference_steps=...)`` returning ``DecoderOutput(sample=...)``, ``enable_tiling()`` /
``enable_slicing()``, and ``from_pretrained`` / ``save_pretrained`` of a folder with
``config.json`` and ``diffusion_pytorch_model.safetensors`` (the same tensor names as a DGAE
checkpoint). Encode and decode run :mod:`dgae.pipeline` with this module's encoder and U-Net, as
every runtime of the service does, so a latent + seed decodes to the service's image.

Latent spaces. Like ``AutoencoderKL``, ``encode`` returns *raw* latents (the posterior of the
encoder) and ``decode`` takes raw latents; pipelines map them to the space their denoiser works
in with ``(z - shift_factor) * scaling_factor`` and back with ``latents / scaling_factor +
shift_factor``. The config sets ``scaling_factor = latent_scale`` and ``shift_factor =
latent_shift`` of the DGAE config, so a pipeline's latents are exactly DGAE's *public* latents
(what the service's ``/encode`` returns and ``/decode`` takes). Pipelines that ignore
``shift_factor`` (DiT, SD 1.x) see the same space only when ``latent_shift`` is 0, as it is for
the bundled model.

Seeds: see :mod:`dgae_diffusers.seeds` (a generator or list of generators becomes per-sample
seeds; ``seeds=`` reproduces a service call exactly).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook

from dgae import pipeline
from dgae.request import DecodeRequest, check_images
from dgae.config import IMAGE_CHANNELS, DGAEConfig
from dgae.decoder import Decoder
from dgae.encoder import Encoder
from dgae.errors import ConfigError
from dgae.model import DGAE
from dgae.sampler import Denoiser

from .posterior import DGAEPosterior
from .seeds import Generators, Seeds, seeds_for

log = logging.getLogger(__name__)

TILE_ON, TILE_OFF = "auto", "off"
STATE_DTYPE = torch.float32  # the sampler state stays fp32 whatever the weights' dtype (as in the service)


def derived_config(cfg: DGAEConfig) -> dict[str, Any]:
    """The diffusers-facing config entries a DGAE config implies (pipelines read these names:
    ``scaling_factor``, ``shift_factor``, ``latent_channels``, and ``block_out_channels`` whose
    length gives ``vae_scale_factor = 2 ** (len - 1)``)."""
    enc = cfg.encoder
    return {"scaling_factor": float(cfg.latent_scale), "shift_factor": float(cfg.latent_shift),
            "latent_channels": cfg.latent_channels, "in_channels": IMAGE_CHANNELS, "out_channels": IMAGE_CHANNELS,
            "block_out_channels": [enc.base_channels * m for m in enc.channel_mult]}


def cast(vae: AutoencoderDGAE, dtype: torch.dtype) -> AutoencoderDGAE:
    """``vae`` in ``dtype`` (no call when it already is: diffusers' ``to(dtype)`` logs a spurious
    keep-in-fp32 warning on every call)."""
    return vae if vae.dtype == dtype else vae.to(dtype=dtype)


class AutoencoderDGAE(ModelMixin, AutoencoderMixin, ConfigMixin):
    """A DGAE encoder + diffusion decoder with diffusers' autoencoder interface.

    ``dgae_config`` is the DGAE config as a dict (``DGAEConfig.to_dict()``); the other entries
    are derived from it (:func:`derived_config`) and only checked when given (a folder's
    ``config.json`` carries them for the pipelines that read them)."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, dgae_config: dict | None = None, scaling_factor: float | None = None,
                 shift_factor: float | None = None, latent_channels: int | None = None,
                 in_channels: int | None = None, out_channels: int | None = None,
                 block_out_channels: Sequence[int] | None = None, force_upcast: bool = False,
                 default_inference_steps: int | None = None, source_checkpoint_sha256: str | None = None):
        super().__init__()
        if dgae_config is None:
            raise ConfigError("AutoencoderDGAE needs dgae_config (a DGAE config as a dict; see "
                              "'dgae export diffusers' or AutoencoderDGAE.from_dgae)")
        cfg = DGAEConfig.from_dict(dgae_config)
        derived = derived_config(cfg)
        given = {"scaling_factor": scaling_factor, "shift_factor": shift_factor, "latent_channels": latent_channels,
                 "in_channels": in_channels, "out_channels": out_channels,
                 "block_out_channels": None if block_out_channels is None else list(block_out_channels)}
        for key, value in given.items():
            if value is not None and value != derived[key]:
                raise ConfigError(f"config {key}={value!r} disagrees with dgae_config (which implies {derived[key]!r})")
        steps = default_inference_steps
        if steps is not None and not 1 <= steps <= cfg.sampler.max_steps:
            raise ConfigError(f"default_inference_steps must be in [1, {cfg.sampler.max_steps}], got {steps}")
        self.register_to_config(**derived)
        self.dgae = cfg  # the runtime DGAE config (enable_tiling may change its tile sizes)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.use_tiling = False
        self.use_slicing = False

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def from_dgae(cls, model: DGAE, source_checkpoint_sha256: str | None = None) -> AutoencoderDGAE:
        """The same weights as a loaded DGAE model (copied; on the model's device and dtype)."""
        param = next(model.parameters())
        vae = cls(dgae_config=model.config.to_dict(), source_checkpoint_sha256=source_checkpoint_sha256)
        vae.load_state_dict(model.state_dict(), strict=True)
        return cast(vae, param.dtype).to(param.device).eval()

    # --- tiling / slicing -------------------------------------------------------------------
    def enable_tiling(self, decode_tile: int | None = None, decode_overlap: int | None = None,
                      encode_tile: int | None = None, encode_overlap: int | None = None) -> None:
        """Images larger than a tile are encoded/decoded as overlapping, blended tiles (the
        service's ``tile=auto``). Tile sizes default to the model's config; overriding them gives
        other images than the service's (the blend changes) and is for memory limits only."""
        changes = {k: v for k, v in {"decode_tile": decode_tile, "decode_overlap": decode_overlap,
                                     "encode_tile": encode_tile, "encode_overlap": encode_overlap}.items()
                   if v is not None}
        if changes:
            self.dgae = self.dgae.replace(tiling=replace(self.dgae.tiling, **changes))
        super().enable_tiling()

    @property
    def tile_mode(self) -> str:
        return TILE_ON if self.use_tiling else TILE_OFF

    def _slices(self, n: int) -> list[slice]:
        step = 1 if self.use_slicing else max(n, 1)
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    # --- encode -----------------------------------------------------------------------------
    def _moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(x.to(self.dtype))
        return mean.float(), logvar.float()

    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple[DGAEPosterior]:
        """images [N, 3, H, W] in [-1, 1] (H, W multiples of f) -> the posterior over raw latents
        [N, c, H/f, W/f] (``.mode()``: the mean; ``.sample(generator, seeds=...)``: seeded)."""
        check_images(self.dgae, x)
        parts = [pipeline.encode_moments(self.dgae, self._moments, x[sl], self.tile_mode)
                 for sl in self._slices(len(x))]
        mean, logvar = (torch.cat([p[i] for p in parts]).to(x.dtype) for i in (0, 1))
        posterior = DGAEPosterior(mean, logvar)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    # --- decode -----------------------------------------------------------------------------
    def _denoiser(self) -> Denoiser:
        forward, dtype = self.decoder.forward_buffer, self.dtype
        return lambda buf, t: forward(buf.to(dtype), t)

    @apply_forward_hook
    @torch.no_grad()
    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: Generators = None,
               num_inference_steps: int | None = None, seeds: Seeds = None,
               solver: str | None = None) -> DecoderOutput | tuple[torch.Tensor]:
        """raw latents [N, c, h, w] -> images [N, 3, h*f, w*f] in [-1, 1] (in z's dtype).

        ``num_inference_steps``: sampler steps (default: the config's ``default_inference_steps``,
        else the model's own default); ``seeds`` / ``generator``: the per-sample seeds (see
        :mod:`dgae_diffusers.seeds`). The sampler is not differentiable here (no autograd)."""
        latents = pipeline.to_public(self.dgae, z.float())
        steps = num_inference_steps or self.config.default_inference_steps
        req = DecodeRequest.resolve(self.dgae, latents, steps, seeds_for(len(latents), generator, seeds),
                                    self.tile_mode, solver)  # the one check, as on every other path
        denoise = self._denoiser()
        images = torch.cat([pipeline.decode(self.dgae, denoise, req.split(sl), state_dtype=STATE_DTYPE)
                            for sl in self._slices(req.n)]).to(z.dtype)
        return DecoderOutput(sample=images) if return_dict else (images,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: Generators = None) -> DecoderOutput | tuple[torch.Tensor]:
        """Encode then decode (``AutoencoderKL.forward``'s signature)."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict, generator=generator)
