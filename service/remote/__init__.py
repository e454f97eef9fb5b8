"""Remote VAE protocol (diffusers' ``remote_decode`` / ``remote_encode``, SD.Next) under /remote."""
from .routes import build_router

__all__ = ["build_router"]
