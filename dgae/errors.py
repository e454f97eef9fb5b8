"""Typed errors. Every user-facing failure is one of these, so CLIs print one line and HTTP maps codes."""
from __future__ import annotations


class DGAEError(Exception):
    """Base class for all errors the project raises on purpose."""

    code = "dgae_error"


class ConfigError(DGAEError):
    """A configuration or preset is invalid or unknown."""

    code = "config_error"


class CheckpointError(DGAEError):
    """A checkpoint file is missing, truncated, not DGAE, or does not match its config."""

    code = "checkpoint_error"


class InputError(DGAEError):
    """User input (image, tensor, parameter) is malformed or out of range."""

    code = "invalid_input"


class TooLargeError(InputError):
    """Input exceeds a configured size limit (bytes, pixels, items)."""

    code = "too_large"


class BackendError(DGAEError):
    """A runtime backend failed or is unavailable (missing provider, engine mismatch)."""

    code = "backend_error"


class ExportError(DGAEError):
    """An export failed: tracing, ONNX checking, or parity validation against PyTorch."""

    code = "export_error"


class OutputError(DGAEError):
    """Results could not be written: disk full, file size limit, a folder that vanished or is read-only."""

    code = "output_error"
