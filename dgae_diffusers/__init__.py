"""DGAE for diffusers: ``AutoencoderDGAE`` (a diffusers autoencoder wrapping the DGAE model) and
the ``dgae export diffusers`` folder writer. Needs the ``diffusers`` package."""
from .autoencoder_dgae import AutoencoderDGAE
from .export import export_diffusers

__all__ = ["AutoencoderDGAE", "export_diffusers"]
