"""Bulk encoding and decoding of whole datasets (``dgae encode-dataset`` / ``dgae decode-dataset``):
sources (folder, list, WebDataset tars), preprocessing, sharded resumable exactly-once output, the
local (DataLoader workers, torchrun ranks) and Ray engines. Reading the shards back is
:mod:`formats.shards` (a lower layer: training code needs no backend to read latents)."""
