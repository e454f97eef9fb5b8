"""What both bulk directions share: which checkpoint runs on which backend, device and precision.

The backend defaults to ``torch``, not the service's ``auto``: a shard's bytes depend on the
runtime that computed them, and ``auto``'s choice depends on the machine, so a dataset encoded in
parts on different machines would not be one dataset. Choose a runtime by name to go faster
(``--backend onnxruntime`` on CPU, ``tensorrt`` on a GPU); the manifests record it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.base import Backend
from backends.factory import create_backend
from dgae.checkpoint import resolve_checkpoint
from dgae.hashing import file_sha256


@dataclass(frozen=True, kw_only=True)
class RuntimeOptions:
    checkpoint: str | None = None  # None: the bundled checkpoint
    backend: str = "torch"
    device: str = "cpu"
    precision: str = "fp32"
    backend_options: dict[str, Any] = field(default_factory=dict)  # passed to backends.factory.create_backend

    def checkpoint_path(self) -> Path:
        return resolve_checkpoint(self.checkpoint)

    def create_backend(self, device: str | None = None) -> Backend:
        """The backend these options name, on ``device`` (a rank's GPU) or the options' own."""
        return create_backend(self.backend, self.checkpoint_path(), device=device or self.device,
                              precision=self.precision, **self.backend_options)

    def checkpoint_sha256(self, backend: Backend | None = None) -> str:
        """The checkpoint's sha256: the backend's record of it when it has one, else hashed from the file."""
        return (backend.checkpoint_sha256 if backend is not None else "") or file_sha256(self.checkpoint_path())

    def runtime_record(self) -> dict[str, str]:
        """The runtime as the plan headers and manifests record it."""
        return {"backend": self.backend, "precision": self.precision, "device": self.device}
