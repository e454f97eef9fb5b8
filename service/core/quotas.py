"""Per-key quotas, protocol-neutral: requests per second and megapixels per minute, each a token bucket
per principal name (:mod:`service.core.auth`), refused with 429 ``quota_exceeded`` and ``Retry-After``.

- requests: one token per authenticated request (charged at authentication); the bucket holds one
  second's worth (at least one request), so ``rps=0.5`` allows one request every two seconds;
- megapixels: a request's cost in admission (the pixels it makes the service hold, see
  :mod:`service.core.admission`), charged once the in-flight budget has room for it (a request the
  budget refuses costs no quota). The bucket holds one minute's worth. A full bucket admits any single
  request, even one larger than the whole minute's quota (the bucket goes into debt and refills
  before the next), so no request is refused forever.

Metrics carry the principal's name, never the key: ``dgae_key_requests_total{key}``,
``dgae_key_megapixels_total{key}`` and ``dgae_quota_rejections_total{key, quota}``.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Callable

from .auth import Principal
from .errors import QuotaExceeded, retry_after
from .metrics import ServiceMetrics

PIXELS_PER_MEGAPIXEL = 1_000_000
SECONDS_PER_MINUTE = 60
REQUEST_COST = 1.0
MIN_REQUEST_BURST = 1.0  # a bucket of requests holds at least one
MIN_RETRY_AFTER_S = 1  # Retry-After is whole seconds
RPS, MP_PER_MIN = "rps", "mp_per_min"


class TokenBucket:
    """``rate`` tokens per second up to ``capacity``; starts full. Not thread-safe (Quotas locks)."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float]):
        self.rate, self.capacity, self._clock = rate, capacity, clock
        self.tokens, self._updated = capacity, clock()

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._updated) * self.rate)
        self._updated = now

    def take(self, cost: float) -> float:
        """Take ``cost`` tokens and return 0, or return the seconds until they could be taken. A full
        bucket always gives (into debt when ``cost`` is more than it holds)."""
        self._refill()
        if self.tokens >= cost or self.tokens >= self.capacity:
            self.tokens -= cost
            return 0.0
        return (min(cost, self.capacity) - self.tokens) / self.rate


class Quotas:
    def __init__(self, metrics: ServiceMetrics, clock: Callable[[], float] = time.monotonic):
        self.metrics, self._clock = metrics, clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._lock = threading.Lock()

    def _bucket(self, name: str, kind: str, rate: float, capacity: float) -> TokenBucket:
        """The principal's bucket of ``kind``; a new one when its quota changed (a keys-file reload)."""
        bucket = self._buckets.get((name, kind))
        if bucket is None or (bucket.rate, bucket.capacity) != (rate, capacity):
            bucket = self._buckets[(name, kind)] = TokenBucket(rate, capacity, self._clock)
        return bucket

    def _refuse(self, principal: Principal, kind: str, wait_s: float, what: str) -> QuotaExceeded:
        self.metrics.quota_rejections.labels(principal.name, kind).inc()
        seconds = max(MIN_RETRY_AFTER_S, math.ceil(wait_s))
        return QuotaExceeded(f"API key {principal.name!r} is over its quota of {what}; retry in {seconds} s",
                             headers=retry_after(seconds))

    def charge_request(self, principal: Principal) -> None:
        """Count one request of ``principal``; 429 when over its requests-per-second quota."""
        rps = principal.quota.rps
        if rps is not None:
            with self._lock:
                wait_s = self._bucket(principal.name, RPS, rps, max(MIN_REQUEST_BURST, rps)).take(REQUEST_COST)
            if wait_s:
                raise self._refuse(principal, RPS, wait_s, f"{rps:g} requests per second")
        self.metrics.key_requests.labels(principal.name).inc()

    def charge_pixels(self, principal: Principal | None, pixels: int) -> None:
        """Take a request's pixels from ``principal``'s megapixels-per-minute quota (429 when over it).
        None (a caller that did not authenticate through a KeyStore) is not charged."""
        if principal is None:
            return
        megapixels = pixels / PIXELS_PER_MEGAPIXEL
        limit = principal.quota.mp_per_min
        if limit is not None:
            with self._lock:
                bucket = self._bucket(principal.name, MP_PER_MIN, limit / SECONDS_PER_MINUTE, limit)
                wait_s = bucket.take(megapixels)
            if wait_s:
                raise self._refuse(principal, MP_PER_MIN, wait_s, f"{limit:g} megapixels per minute "
                                   f"(this request holds {megapixels:.3g})")
        self.metrics.key_megapixels.labels(principal.name).inc(megapixels)
