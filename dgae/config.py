"""Frozen configuration dataclasses. A config is serialized *with* the weights (checkpoint metadata).

Every size, scale and sampler default lives here; nothing else in the model hard-codes them.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

IMAGE_CHANNELS = 3
SOLVERS = ("euler", "heun")  # the sampler's update rules (dgae.sampler.integrate)
SCHEDULES = ("uniform", "shifted")  # its time grids (dgae.sampler.timesteps)
# The decoder's x2 upsampling (dgae.layers.Upsample): ADM's nearest-then-3x3-conv, or the conv at
# the low resolution and nearest after it (the conv costs a quarter; same weights, other function).
UPSAMPLES = ("nearest-conv", "conv-nearest")


@dataclass(frozen=True)
class EncoderConfig:
    """SD-VAE KL encoder. Spatial factor f = 2 ** (len(channel_mult) - 1)."""

    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    norm_groups: int = 32
    mid_attention: bool = True


@dataclass(frozen=True)
class DecoderConfig:
    """ADM U-Net denoiser v(x_t, t, z). One level per entry of channel_mult; attention at the
    levels whose downsampling factor (2 ** level) is in ``attention_factors``."""

    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_factors: tuple[int, ...] = (8, 16, 32)
    head_channels: int = 64
    temb_channels: int = 512
    norm_groups: int = 32
    timestep_scale: float = 1000.0  # t in [0, 1] is embedded as t * timestep_scale
    dropout: float = 0.0
    upsample: str = "nearest-conv"  # one of UPSAMPLES


@dataclass(frozen=True)
class SamplerConfig:
    """Few-step flow-matching sampler (t runs 1 -> 0)."""

    default_steps: int = 4
    max_steps: int = 64
    solver: str = "euler"  # "euler" | "heun"
    schedule: str = "uniform"  # "uniform" | "shifted"
    shift: float = 1.0  # shifted schedule: t' = s t / (1 + (s - 1) t)


@dataclass(frozen=True)
class TilingConfig:
    """Tiled decode/encode for images larger than a tile (see dgae/tiling.py), in pixels.

    A tile is a power of two plus the overlap, so tiles step by a power of two and a 2^k image
    needs (2^k / step) + 1 per side at most: the extra work stays (1 + overlap/step)^2 at every
    size instead of jumping to 2.25x when a side is exactly twice the tile. Decode tiles
    (256 + 32, extra ~1.27x) are about twice the bundled model's last training crop (128) and keep
    a tile's attention small. Encode tiles are 256 + 16 (extra ~1.13x): the encoder's single-head
    mid attention grows with the tile's pixels, so per megapixel a 576 px tile cost 2.3x a 256 px
    image; 272 px tiles bring it to ~1.2x, and their encodes still decode within 37 dB of untiled
    ones (docs/benchmarks-sizes.md)."""

    decode_tile: int = 288
    decode_overlap: int = 32
    encode_tile: int = 272
    encode_overlap: int = 16


# Tiling defaults that older checkpoints stored with their config (the bundled one included): a
# stored tiling equal to one of them is read as today's default, so a checkpoint that never
# chose its tiles follows the code's. A checkpoint that stored any other tiling keeps it.
SUPERSEDED_TILINGS = ({"decode_tile": 288, "decode_overlap": 32, "encode_tile": 576, "encode_overlap": 64},)


@dataclass(frozen=True)
class DGAEConfig:
    name: str = "custom"
    latent_channels: int = 4
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    # Public latents are (mean - latent_shift) * latent_scale; the decoder undoes it.
    latent_scale: float = 1.0
    latent_shift: float = 0.0
    logvar_min: float = -30.0
    logvar_max: float = 20.0
    norm_eps: float = 1e-6

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.encoder.channel_mult) - 1)

    @property
    def decoder_multiple(self) -> int:
        """The U-Net's input sides must be multiples of this (decode pads latents to fit)."""
        return 2 ** (len(self.decoder.channel_mult) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides every network accepts whole: multiples of f (encoder) and of the U-Net's
        multiple (exported graphs, tiles and engine profiles use this)."""
        return math.lcm(self.downsample_factor, self.decoder_multiple)

    def validate(self) -> "DGAEConfig":
        enc, dec, smp = self.encoder, self.decoder, self.sampler
        if self.latent_channels < 1:
            raise ConfigError(f"latent_channels must be >= 1, got {self.latent_channels}")
        if self.downsample_factor not in (1, 2, 4, 8, 16, 32, 64):
            raise ConfigError(f"unsupported downsample factor {self.downsample_factor}")
        for label, base, mult, groups in (("encoder", enc.base_channels, enc.channel_mult, enc.norm_groups),
                                          ("decoder", dec.base_channels, dec.channel_mult, dec.norm_groups)):
            for m in mult:
                if (base * m) % groups:
                    raise ConfigError(f"{label}: channels {base * m} not divisible by norm_groups {groups}")
        for m in dec.channel_mult:
            if dec.attention_factors and (dec.base_channels * m) % dec.head_channels:
                raise ConfigError(f"decoder channels {dec.base_channels * m} not divisible by head_channels")
        if dec.upsample not in UPSAMPLES:
            raise ConfigError(f"decoder.upsample must be one of {', '.join(UPSAMPLES)}, got {dec.upsample!r}")
        if smp.solver not in SOLVERS:
            raise ConfigError(f"sampler.solver must be one of {', '.join(SOLVERS)}, got {smp.solver!r}")
        if smp.schedule not in SCHEDULES:
            raise ConfigError(f"sampler.schedule must be one of {', '.join(SCHEDULES)}, got {smp.schedule!r}")
        if not 1 <= smp.default_steps <= smp.max_steps:
            raise ConfigError("sampler.default_steps must lie in [1, max_steps]")
        if smp.shift <= 0:
            raise ConfigError("sampler.shift must be > 0")
        if self.latent_scale == 0:
            raise ConfigError("latent_scale must be non-zero")
        tl = self.tiling
        for label, tile, overlap, unit in (("decode", tl.decode_tile, tl.decode_overlap, self.size_multiple),
                                           ("encode", tl.encode_tile, tl.encode_overlap, self.downsample_factor)):
            if tile <= 0 or tile % unit or overlap % unit or not 0 < overlap < tile:
                raise ConfigError(f"tiling.{label}_tile ({tile}) and {label}_overlap ({overlap}) must be multiples "
                                  f"of {unit} with 0 < overlap < tile")
        return self

    # --- serialization -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DGAEConfig":
        try:
            d = dict(d)
            subs = {"encoder": EncoderConfig, "decoder": DecoderConfig, "sampler": SamplerConfig,
                    "tiling": TilingConfig}
            if d.get("tiling") in SUPERSEDED_TILINGS:
                d["tiling"] = dataclasses.asdict(TilingConfig())
            for key, sub in subs.items():
                if key in d:
                    d[key] = _build(sub, d[key])
            return _build(cls, d).validate()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid DGAE config: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> "DGAEConfig":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from exc

    def replace(self, **changes: Any) -> "DGAEConfig":
        return dataclasses.replace(self, **changes).validate()


def _build(cls, d: dict[str, Any]):
    if not isinstance(d, dict):
        raise ConfigError(f"{cls.__name__}: expected an object, got {type(d).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**kwargs)
