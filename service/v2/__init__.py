"""Open Inference Protocol (KServe v2, the protocol of NVIDIA Triton) over REST: models
``dgae-encoder`` and ``dgae-decoder`` on the service's own batchers, limits and auth."""
from .routes import install

__all__ = ["install"]
