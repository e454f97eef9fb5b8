"""Prometheus metrics, one CollectorRegistry per app (tests build many apps in one process).

Names follow the Triton/TEI spirit: ``dgae_request_*`` per route, ``dgae_queue_*`` /
``dgae_batch_*`` / ``dgae_compute_*`` per operation (encode | decode).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
STEP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("dgae_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.request_seconds = Histogram("dgae_request_duration_seconds", "HTTP request latency", ["route"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.failures = Counter("dgae_request_failures", "Failed requests by error code", ["route", "reason"],
                                registry=r)
        self.queue_seconds = Histogram("dgae_queue_duration_seconds", "Time a request waited for its batch",
                                       ["operation"], buckets=LATENCY_BUCKETS, registry=r)
        self.compute_seconds = Histogram("dgae_compute_duration_seconds", "Backend time per batch",
                                         ["operation"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("dgae_batch_size", "Items per backend batch", ["operation"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.pending = Gauge("dgae_pending_requests", "Requests queued or computing", ["operation"], registry=r)
        self.rejected = Counter("dgae_queue_rejections", "Requests refused because the queue was full",
                                ["operation"], registry=r)
        self.worker_errors = Counter("dgae_worker_errors", "Requests failed by an unexpected backend exception "
                                     "(answered 422 unprocessable_input)", ["operation"], registry=r)
        self.oom_splits = Counter("dgae_oom_splits", "Batches split after an out-of-memory error",
                                  ["operation"], registry=r)
        self.dropped = Counter("dgae_dropped", "Queued requests dropped before compute (client_disconnected, "
                               "deadline_exceeded, cancelled)", ["operation", "reason"], registry=r)
        self.inflight_pixels = Gauge("dgae_inflight_pixels", "Pixels of admitted requests not yet answered "
                                     "(queued, computing or encoding the response)", ["operation"], registry=r)
        self.inflight_limit = Gauge("dgae_inflight_pixels_limit", "The in-flight pixel budget (all operations)",
                                    registry=r)
        self.budget_rejections = Counter("dgae_budget_rejections", "Requests refused because the in-flight "
                                         "pixel budget was full", ["operation"], registry=r)
        # per API key, labelled by the key's name from the keys file (never by the key)
        self.key_requests = Counter("dgae_key_requests", "Authenticated requests by key name", ["key"], registry=r)
        self.key_megapixels = Counter("dgae_key_megapixels", "Megapixels admitted by key name", ["key"], registry=r)
        self.quota_rejections = Counter("dgae_quota_rejections", "Requests refused (429) by key name and quota "
                                        "(rps, mp_per_min)", ["key", "quota"], registry=r)
        self.auth_failures = Counter("dgae_auth_failures", "Requests refused (401): missing or invalid key",
                                     registry=r)
        self.api_keys = Gauge("dgae_api_keys", "API keys in force (environment and keys file)", registry=r)
        self.key_reloads = Counter("dgae_api_keys_reloads", "Keys-file reloads by result (ok, error: the "
                                   "previous keys stay)", ["result"], registry=r)
        self.images_encoded = Counter("dgae_images_encoded", "Images encoded", registry=r)
        self.images_decoded = Counter("dgae_images_decoded", "Images decoded", registry=r)
        self.decode_steps = Histogram("dgae_decode_steps", "Sampler steps per decoded image",
                                      buckets=STEP_BUCKETS, registry=r)
        self.cost_rate = Gauge("dgae_cost_seconds_per_unit", "The cost model's rate: seconds per megapixel-step "
                               "(decode) or megapixel (encode), measured at start-up, then an EWMA of finished work",
                               ["operation", "unit", "backend", "device"], registry=r)
        self.over_deadline = Counter("dgae_over_deadline_rejections", "Requests refused up front: estimated time "
                                     "over their deadline", ["operation"], registry=r)
        self.jobs = Gauge("dgae_jobs", "Jobs kept, by state", ["state"], registry=r)
        self.job_passes = Counter("dgae_job_passes", "Network passes computed for jobs (denoiser calls of a "
                                  "decode: tiles x steps; encoder calls of an encode)", ["operation"], registry=r)
        self.job_queue_seconds = Histogram("dgae_job_queue_duration_seconds", "Time a job waited before it ran",
                                           ["operation"], buckets=LATENCY_BUCKETS + (300.0, 600.0, 1800.0),
                                           registry=r)
        self.job_result_bytes = Gauge("dgae_job_result_bytes", "Bytes of job results on disk", registry=r)
        self.ready = Gauge("dgae_ready", "1 once the model is loaded and warmed up", registry=r)
        self.model_info = Gauge("dgae_model_info", "Loaded model (value 1)",
                                ["preset", "backend", "device", "precision", "checkpoint_sha256"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
