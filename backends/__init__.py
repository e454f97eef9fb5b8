"""Runtime backends behind one interface (see base.Backend)."""
from .base import Backend, BackendInfo

__all__ = ["Backend", "BackendInfo"]
