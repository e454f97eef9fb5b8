"""File and wire formats around the model: latent files (safetensors / npy / JSON with their
metadata), images (decode, fit, restore, encode) and latent shards / datasets. Above the model
core (:mod:`dgae`), below every runtime, service and tool that reads or writes them."""
