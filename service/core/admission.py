"""Admission by cost: a pixel limit per request and an in-flight pixel budget shared by all requests.

A request's cost is the pixels its networks process, padded and tiled, the same on every protocol
(:func:`service.core.cost.encode_charge` / :func:`~service.core.cost.decode_charge`; /encode reads
them from the image headers before any pixel is decoded). Sampler steps are not part of the cost: the budget bounds
the memory that admitted work holds (inputs, activations, outputs scale with pixels, not steps),
while time is bounded by ``max_steps`` and the request deadline.

- cost over ``max_request_pixels`` -> 413 ``too_large`` naming the limit;
- the caller's megapixels-per-minute quota (:mod:`service.core.quotas`), charged once the budget
  has room -> 429 ``quota_exceeded`` with ``Retry-After`` (the reservation is released again);
- the budget (``inflight_pixels``) holds the cost of every request admitted and not yet answered
  (queued on a batcher, computing, encoding its response). A request that does not fit -> 503
  ``budget_full`` with ``Retry-After``. When nothing is in flight any request within the
  per-request limit is admitted, even one larger than the whole budget (it then runs alone), so
  no request is refused forever.

HTTP routes call :meth:`Admission.admit` (the principal comes from the exchange's scope, put there by
the API-key dependency); other protocols call :meth:`Admission.reserve` with their principal and
release the reservation themselves. The HTTP reservation lives on the ASGI scope and
:class:`AdmissionMiddleware` releases it when the exchange ends, however it ends (answered, failed,
client gone). A batch still computing for a client that went away finishes after its reservation
is released: the budget can be overshot by at most one running batch per operation.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from dgae.errors import TooLargeError

from .auth import PRINCIPAL_SCOPE_KEY, Principal
from .errors import BudgetFull, retry_after
from .metrics import ServiceMetrics
from .quotas import Quotas
from .settings import ServiceSettings

log = logging.getLogger(__name__)

RESERVATIONS_SCOPE_KEY = "dgae.reservations"


class PixelBudget:
    """Pixels reserved against a capacity. Thread-safe; an idle budget admits any single request."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._in_use = 0
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        return self._in_use

    def try_reserve(self, pixels: int) -> bool:
        with self._lock:
            if self._in_use and self._in_use + pixels > self.capacity:
                return False
            self._in_use += pixels
            return True

    def release(self, pixels: int) -> None:
        with self._lock:
            self._in_use -= pixels


@dataclass
class Reservation:
    operation: str
    pixels: int
    _admission: "Admission" = field(repr=False)
    released: bool = False

    def release(self) -> None:
        """Give the pixels back (once; later calls do nothing)."""
        if not self.released:
            self.released = True
            self._admission.release(self)


class Admission:
    def __init__(self, settings: ServiceSettings, metrics: ServiceMetrics, quotas: Quotas | None = None):
        self.quotas = quotas or Quotas(metrics)
        self.max_request_pixels = settings.max_request_pixels
        self.retry_after_s = settings.retry_after_s
        self.budget = PixelBudget(settings.inflight_pixels)
        self.metrics = metrics
        metrics.inflight_limit.set(settings.inflight_pixels)

    def check(self, operation: str, pixels: int) -> None:
        """413 when one request's total pixels are over the per-request limit."""
        if pixels > self.max_request_pixels:
            raise TooLargeError(f"this {operation} request holds {pixels} pixels (all images together), over the "
                                f"limit of {self.max_request_pixels} pixels per request (max_request_pixels); "
                                f"send fewer or smaller images")

    def reserve(self, operation: str, pixels: int, principal: Principal | None = None) -> Reservation:
        """Check the per-request limit (413), take ``pixels`` of the budget or refuse (503), then charge
        ``principal``'s megapixel quota or release and refuse (429)."""
        self.check(operation, pixels)
        if not self.budget.try_reserve(pixels):
            self.metrics.budget_rejections.labels(operation).inc()
            raise BudgetFull(f"the server is busy: {self.budget.in_use} of {self.budget.capacity} in-flight pixels "
                             f"are taken and this {operation} needs {pixels}; retry later",
                             headers=retry_after(self.retry_after_s))
        self.metrics.inflight_pixels.labels(operation).inc(pixels)
        reservation = Reservation(operation, pixels, self)
        try:
            self.quotas.charge_pixels(principal, pixels)
        except BaseException:
            reservation.release()
            raise
        return reservation

    def release(self, reservation: Reservation) -> None:
        self.budget.release(reservation.pixels)
        self.metrics.inflight_pixels.labels(reservation.operation).dec(reservation.pixels)

    def admit(self, request: Request, operation: str, pixels: int) -> None:
        """Reserve for this HTTP exchange; :class:`AdmissionMiddleware` releases it when the exchange ends."""
        reservation = self.reserve(operation, pixels, request.scope.get(PRINCIPAL_SCOPE_KEY))
        request.scope.setdefault(RESERVATIONS_SCOPE_KEY, []).append(reservation)
        log.debug("admitted %s of %d pixels (%d of %d in flight)", operation, pixels, self.budget.in_use,
                  self.budget.capacity)


class AdmissionMiddleware:
    """Releases the reservations an exchange made, once the app has finished with it."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            for reservation in scope.get(RESERVATIONS_SCOPE_KEY, ()):
                reservation.release()
