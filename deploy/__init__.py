"""Deployment helpers: the container entrypoint (also run outside Docker), its runtime-file cache
and the HEALTHCHECK probe. Nothing here touches model internals; serving goes through
``python -m cli serve``."""
