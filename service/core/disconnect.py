"""Dropping the work of clients that hang up before their answer.

Once a request's body has been read, the only message the server can still receive for it is
``http.disconnect``. :class:`DisconnectMiddleware` waits for that message while the handler runs
(parsing, queued on a batcher, computing, encoding the answer). If the client goes before the
response is complete, the handler is cancelled with reason ``client_disconnected``: a job still
queued on a batcher is dropped before compute (the batcher counts it in
``dgae_dropped_total{reason="client_disconnected"}``), its admission reservation is released, and
the exchange is recorded with status 499 (nginx's "client closed request"). A batch already
computing in a worker thread cannot be interrupted: it finishes and its result is discarded.

Handlers that call ``receive()`` after the body (``Request.is_disconnected``) still get the
``http.disconnect`` message, from the watcher.
"""
from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

CLIENT_DISCONNECTED = "client_disconnected"  # the cancel message, the metric reason and the error code
CLIENT_CLOSED_STATUS = 499
DISCONNECTED_SCOPE_KEY = "dgae.client_disconnected"
DISCONNECT = {"type": "http.disconnect"}


def closing_task_cancelled() -> bool:
    """True when the running task itself is being cancelled (not just something it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _Exchange:
    """One HTTP exchange: passes the body through, then watches for the client going away."""

    def __init__(self, receive: Receive, send: Send):
        self._receive, self._send = receive, send
        self._watcher: asyncio.Task | None = None
        self._gone = asyncio.Event()
        self.handler: asyncio.Task | None = None
        self.response_complete = False
        self.disconnected = False

    async def receive(self) -> Message:
        if self._watcher is not None:  # the body is complete: only a disconnect can come, via the watcher
            await self._gone.wait()
            return dict(DISCONNECT)
        message = await self._receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="dgae-disconnect-watch")
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.response_complete = True  # servers report http.disconnect once the response is complete
        await self._send(message)

    async def _watch(self) -> None:
        message = await self._receive()
        if message["type"] != DISCONNECT["type"]:
            log.warning("unexpected ASGI message %r after the request body; no longer watching", message["type"])
            return
        self._gone.set()
        if not self.response_complete and self.handler is not None and not self.handler.done():
            self.disconnected = True
            self.handler.cancel(CLIENT_DISCONNECTED)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()


class DisconnectMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(receive, send)
        exchange.handler = asyncio.get_running_loop().create_task(self.app(scope, exchange.receive, exchange.send))
        try:
            await exchange.handler
        except asyncio.CancelledError:
            if not exchange.disconnected or closing_task_cancelled():
                raise
            scope[DISCONNECTED_SCOPE_KEY] = True
            log.info("%s %s: the client disconnected before its response; its queued work was dropped",
                     scope.get("method", ""), scope.get("path", ""))
        finally:
            exchange.close()
