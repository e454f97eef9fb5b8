"""Open Inference Protocol over gRPC (``inference.GRPCInferenceService``, the stubs of
``tritonclient[grpc]``) beside the HTTP app: ``dgae serve --grpc-port P``."""
from .server import start, stop

__all__ = ["start", "stop"]
