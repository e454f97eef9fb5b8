"""DGAE: Diffusion-Guided Autoencoder model, sampler, checkpoints and CLI."""
