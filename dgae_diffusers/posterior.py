"""The encoder's posterior as diffusers' ``DiagonalGaussianDistribution``, sampled with the
project's per-sample seeds (:func:`dgae.pipeline.sample_posterior`) instead of one batch draw,
so ``sample(seeds=s)`` is the service's ``/encode?mode=sample&seed=s`` before scaling."""
from __future__ import annotations

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from dgae.pipeline import sample_posterior

from .seeds import Generators, Seeds, seeds_for


class DGAEPosterior(DiagonalGaussianDistribution):
    """mean, logvar [N, c, h, w] of the raw latents (``.mode()``, ``.mean``, ``.std``, ``.kl()``
    as in diffusers)."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        super().__init__(torch.cat([mean, logvar], dim=1))

    def sample(self, generator: Generators = None, seeds: Seeds = None) -> torch.Tensor:
        """mean + std * noise, item i's noise drawn from its own seed (see :mod:`dgae_diffusers.seeds`)."""
        return sample_posterior(self.mean, self.logvar, seeds_for(len(self.mean), generator, seeds))
