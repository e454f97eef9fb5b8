"""Named presets: the paper's latent shapes x decoder sizes, plus small CPU presets.

Paper (arXiv 2506.09644, Table 1): decoder B/M/L = 122M/276M/491M params (base 128/192/256,
temb 512/768/1024), encoder ~35M. Latent configs: f8c4, f16c16, f16c8, f16c4, f32c64.
Names are ``<latent>-<size>`` (e.g. ``f16c16-B``); ``f16c16`` alone means the B decoder.
"""
from __future__ import annotations

from dataclasses import replace

from .config import DecoderConfig, DGAEConfig, EncoderConfig, SamplerConfig, TilingConfig
from .errors import ConfigError

# SD-VAE encoder layouts per spatial factor, chosen so every encoder has ~35M params (paper).
_ENCODER_MULT = {8: (1, 2, 4, 4), 16: (1, 1, 2, 4, 4), 32: (1, 1, 1, 2, 4, 4)}
_DECODER_SIZES = {"B": (128, 512), "M": (192, 768), "L": (256, 1024)}
PAPER_LATENTS = {"f8c4": (8, 4), "f16c16": (16, 16), "f16c8": (16, 8), "f16c4": (16, 4), "f32c64": (32, 64)}
PAPER_DECODER_PARAMS = {"B": 122e6, "M": 276e6, "L": 491e6}
PAPER_ENCODER_PARAMS = 35e6


ENCODE_TILE_STEP = 256  # encode tiles step by this (see TilingConfig); the overlap is the default's or f


def _tiling(f: int) -> TilingConfig:
    """The default tiling, or for a downsampling factor the default's encode tile does not divide
    (f32: 272 is no multiple of 32) a tile of ENCODE_TILE_STEP + f with an overlap of f."""
    default = TilingConfig()
    if default.encode_tile % f == 0 and default.encode_overlap % f == 0:
        return default
    return replace(default, encode_tile=ENCODE_TILE_STEP + f, encode_overlap=f)


def _paper(latent: str, size: str) -> DGAEConfig:
    f, c = PAPER_LATENTS[latent]
    base, temb = _DECODER_SIZES[size]
    return DGAEConfig(
        name=f"{latent}-{size}", latent_channels=c, tiling=_tiling(f),
        encoder=EncoderConfig(base_channels=128, channel_mult=_ENCODER_MULT[f], num_res_blocks=2),
        decoder=DecoderConfig(base_channels=base, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                              attention_factors=(8, 16, 32), head_channels=64, temb_channels=temb),
    )


def _small(name: str, f: int, c: int, enc_base: int, dec_base: int, dec_mult: tuple[int, ...],
           attention: tuple[int, ...], head: int, blocks: int = 1, groups: int = 16) -> DGAEConfig:
    levels = f.bit_length() - 1
    return DGAEConfig(
        name=name, latent_channels=c,
        encoder=EncoderConfig(base_channels=enc_base, channel_mult=(1, 2, 2, 4, 4, 4)[: levels + 1],
                              num_res_blocks=blocks, norm_groups=groups),
        decoder=DecoderConfig(base_channels=dec_base, channel_mult=dec_mult, num_res_blocks=blocks,
                              attention_factors=attention, head_channels=head,
                              temb_channels=4 * dec_base, norm_groups=groups),
        sampler=SamplerConfig(default_steps=2, max_steps=64),
    )


def _registry() -> dict[str, DGAEConfig]:
    reg: dict[str, DGAEConfig] = {}
    for latent in PAPER_LATENTS:
        for size in _DECODER_SIZES:
            reg[f"{latent}-{size}"] = _paper(latent, size)
        reg[latent] = reg[f"{latent}-B"]
    # CPU presets. "tiny": tests (seconds on one core). "small-f8c4": the bundled default.
    # GroupNorm removes each group's magnitude; with 2 channels per group (32 ch / 16 groups) a
    # flat colour cannot be represented at all, so the small presets keep >= 8 channels per group.
    reg["tiny"] = _small("tiny", 8, 4, enc_base=16, dec_base=16, dec_mult=(1, 2, 2, 2),
                         attention=(8,), head=16, groups=8)
    reg["tiny-f16c16"] = _small("tiny-f16c16", 16, 16, enc_base=16, dec_base=16,
                                dec_mult=(1, 2, 2, 2, 2), attention=(16,), head=16, groups=8)
    reg["small-f8c4"] = _small("small-f8c4", 8, 4, enc_base=32, dec_base=32, dec_mult=(1, 2, 3, 4),
                               attention=(8,), head=32, blocks=1, groups=4)
    return reg


def preset_names() -> list[str]:
    return sorted(_registry())


def get_preset(name: str) -> DGAEConfig:
    reg = _registry()
    if name not in reg:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(reg))}")
    return reg[name].validate()
