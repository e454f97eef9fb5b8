"""Shared by the diffusers tests: a real DiTPipeline from tiny random parts around a given VAE,
and a recorder of what a pipeline hands the VAE's decode."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

from dgae_diffusers import AutoencoderDGAE

DIT_CLASS = 3
DIT_STEPS = 2


def tiny_dit_pipeline(vae: AutoencoderDGAE, latent_side: int) -> DiTPipeline:
    """DiT with one 2-head layer (random, seeded) on latent_side x latent_side latents of the VAE."""
    torch.manual_seed(0)
    c = vae.config.latent_channels
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=c,
                                        out_channels=2 * c, num_layers=1, norm_num_groups=8,
                                        sample_size=latent_side, patch_size=2, num_embeds_ada_norm=8)
    return DiTPipeline(transformer=transformer.eval(), vae=vae, scheduler=DDIMScheduler())


def run_dit(pipe: DiTPipeline, seed: int = 0):
    """One class-conditional image, float [1, H, W, 3] in [0, 1] (numpy)."""
    torch.manual_seed(seed)
    return pipe(class_labels=[DIT_CLASS], num_inference_steps=DIT_STEPS, guidance_scale=1.0, output_type="np",
                generator=torch.Generator().manual_seed(seed)).images


@dataclass
class DecodeRecorder:
    """``with DecodeRecorder(vae) as rec:`` wraps ``vae.decode``, recording each call's latents and
    torch's RNG state at that moment (a pipeline that passes no generator, as DiT, gets its
    seeds from the global RNG); ``rec.decode`` is the unwrapped method."""

    vae: AutoencoderDGAE
    calls: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def __enter__(self) -> DecodeRecorder:
        self.decode = self.vae.decode

        def spy(z, **kwargs):
            self.calls.append((z.clone(), torch.get_rng_state()))
            return self.decode(z, **kwargs)

        self.vae.decode = spy
        return self

    def __exit__(self, *exc) -> None:
        del self.vae.decode  # the instance attribute goes; the class's method shows through again
