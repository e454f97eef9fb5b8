"""Service configuration: environment variables with the ``DGAE_`` prefix (pydantic-settings),
mirrored one to one by the ``dgae serve`` flags (see cli.commands.serve).

Paths (checkpoint, engines) come only from here, never from requests. Sampler step limits
default to the checkpoint's own config; ``max_steps`` may only lower the model's maximum.
"""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from formats.images import DEFAULT_MAX_PIXELS
from dgae.precision import PRECISIONS

ENV_PREFIX = "DGAE_"
MIB = 1 << 20
DEFAULT_MAX_REQUEST_PIXELS = DEFAULT_MAX_PIXELS  # a request may hold as many pixels as one largest image
INFLIGHT_LARGEST_REQUESTS = 2  # the default in-flight budget: two largest requests
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
CUDA_DEVICE_PREFIX = "cuda"
CUDA_GRAPH_BACKENDS = ("torch", "auto")  # auto drops it when it picks another runtime (backends.factory)


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # --- model / runtime ----------------------------------------------------------------
    checkpoint: str | None = Field(None, description="checkpoint .safetensors (default: bundled weights/)")
    backend: str = Field("auto", description="backend name understood by backends.factory; auto: the fastest "
                                             "that starts here (CPU: ONNX Runtime with a cached, validated "
                                             "export, else torch channels_last)")
    device: str = Field("cpu", description="cpu | cuda[:N]")
    precision: str = Field("fp32", description="fp32 | fp16 | bf16")
    compile: bool = Field(False, description="torch backend: torch.compile the networks")
    cuda_graph: bool = Field(False, description="torch backend on CUDA: replay each untiled decode as one "
                                                "captured CUDA graph (a bounded number of shapes kept)")
    onnx_dir: str | None = Field(None, description="onnxruntime backend: a 'dgae export onnx' folder")
    engine_dir: str | None = Field(None, description="tensorrt backend: a 'dgae export tensorrt' folder")
    warmup: bool = Field(True, description="run one encode + decode before reporting ready")
    torch_threads: int = Field(0, ge=0, description="CPU intra-op threads (0 = torch's default); 1 helps on "
                                                    "shared, oversubscribed CPUs")

    # --- network --------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int | None = Field(None, ge=0, le=65535, description="also serve the Open Inference Protocol over "
                                  "gRPC (inference.GRPCInferenceService) on this port; unset: HTTP only")
    log_level: str = "info"
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="comma-separated bearer tokens; empty (and no api_keys_file) = no authentication")
    api_keys_file: str | None = Field(
        None, description="file of API keys, one a line: '<key or sha256:hex> [name=] [rps=] [mp_per_min=]' "
                          "(see docs/security.md); re-read when it changes")

    # --- batching and backpressure ----------------------------------------------------------
    max_batch_size: int = Field(8, ge=1, description="items per backend call")
    max_wait_ms: float = Field(10.0, ge=0, description="how long a batch waits to fill up")
    queue_size: int = Field(64, ge=1, description="requests waiting per operation before 503")
    request_timeout_s: float = Field(120.0, gt=0, description="per-request deadline (504 after); work estimated "
                                                               "to take longer is refused up front (413)")
    max_request_timeout_s: float = Field(600.0, gt=0, description="the longest deadline a client may ask for "
                                                                  "with the X-DGAE-Timeout-S header")
    calibrate: bool = Field(True, description="time one decode tile and one encode tile after the warm-up "
                                              "(the cost model's first rates; then learned from finished work)")
    retry_after_s: int = Field(1, ge=1, description="Retry-After on 503")
    shutdown_timeout_s: int = Field(60, ge=1, description="SIGTERM: how long in-flight requests may finish")

    # --- jobs (long work: /v1/jobs) ------------------------------------------------------------
    jobs_dir: str | None = Field(None, description="where job states and results are kept (default: "
                                                   "<cache dir>/jobs, see DGAE_CACHE_DIR)")
    jobs_ttl_s: float = Field(24 * 3600.0, gt=0, description="a finished job and its result are kept this long")
    jobs_max_per_key: int = Field(8, ge=1, description="queued or running jobs per API key (429 beyond)")
    jobs_max_result_bytes: int = Field(2048 * MIB, ge=1, description="result bytes on disk, all jobs (507 beyond)")

    # --- input limits -------------------------------------------------------------------------
    max_body_bytes: int = Field(64 * MIB, ge=1, description="request body limit (413)")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="per image, input or output (413)")
    max_request_pixels: int = Field(DEFAULT_MAX_REQUEST_PIXELS, ge=1,
                                    description="per request, all images together, input or output; checked "
                                                "from image headers / the latent shape before decoding (413)")
    inflight_pixels: int = Field(INFLIGHT_LARGEST_REQUESTS * DEFAULT_MAX_REQUEST_PIXELS, ge=1,
                                 description="pixels of admitted requests not yet answered, all operations "
                                             "together; a request that does not fit gets 503 (one larger than "
                                             "the whole budget runs alone when nothing else is in flight)")
    max_items: int = Field(16, ge=1, description="images or latents per request (413)")
    max_json_values: int = Field(1 << 18, ge=1, description="largest tensor sent or returned as JSON")
    default_steps: int | None = Field(None, ge=1, description="decode steps default (model's if unset)")
    max_steps: int | None = Field(None, ge=1, description="decode steps cap (never above the model's)")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        return value.lower()

    @field_validator("precision")
    @classmethod
    def _check_precision(cls, value: str) -> str:
        if value not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
        return value

    @model_validator(mode="after")
    def _check_cuda_graph(self) -> "ServiceSettings":
        if self.cuda_graph and not self.device.startswith(CUDA_DEVICE_PREFIX):
            raise ValueError(f"cuda_graph=true needs device cuda[:N], got device {self.device!r}")
        if self.cuda_graph and self.backend not in CUDA_GRAPH_BACKENDS:
            raise ValueError(f"cuda_graph=true applies to backend {' or '.join(CUDA_GRAPH_BACKENDS)}, "
                             f"got backend {self.backend!r}")
        return self

    def redacted(self) -> dict[str, Any]:
        """The resolved configuration for logs (API keys replaced by their count)."""
        out = self.model_dump()
        out["api_keys"] = f"<{len(self.api_keys)} key(s)>"  # the file's path is no secret; its keys are not logged
        return out
