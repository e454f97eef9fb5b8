"""Training: recipe config, objective, resumable trainer, CLI."""
