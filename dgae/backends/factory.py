"""Create a backend by name. ``torch`` today; the export work adds ``onnxruntime``, ``tensorrt``
and ``auto`` (fastest available, with the reason logged)."""
from __future__ import annotations

import logging
import os

from ..errors import BackendError
from .base import Backend

log = logging.getLogger(__name__)

BACKENDS = ("torch",)


def create_backend(kind: str, checkpoint: str | os.PathLike, device: str = "cpu", precision: str = "fp32",
                   max_batch_size: int = 0, **options) -> Backend:
    if kind == "torch":
        from .torch_backend import TorchBackend  # noqa: PLC0415

        return TorchBackend.from_checkpoint(checkpoint, device=device, precision=precision,
                                            compile=bool(options.get("compile", False)),
                                            max_batch_size=max_batch_size)
    raise BackendError(f"unknown backend {kind!r}; available: {', '.join(BACKENDS)}")
