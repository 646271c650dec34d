"""Server-Sent Events: long-lived responses that survive every hop between here and a browser.

A stream writes a comment line whenever `KEEPALIVE_S` passed without a write, so no idle timer
on the way (the gateway's, a load balancer's, a proxy's) sees a silent connection: the gateway
renders its stream routes' idle timeout from this constant (stacks/gateway.py). A stream also
ends by itself after its lifetime, with a `retry:` hint the client's EventSource obeys, so a
connection is never pinned to one process for ever (after a scale-up, new streams spread) and a
shutdown does not wait for streams: they end as soon as the app starts shutting down.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

from aiohttp import web

# A comment line at least this often; the gateway's idle timeout for streams is a multiple.
KEEPALIVE_S = 15.0
# How long one stream lasts by default before the client reconnects (it does so on its own).
LIFETIME_S = 30 * 60.0
# What a client waits before reconnecting (the `retry:` field, in ms).
RECONNECT_MS = 2000

T = TypeVar("T")
_CLOSING = web.AppKey("streams_closing", asyncio.Event)


def install(app: web.Application) -> None:
    """Let streams end when the app shuts down (aiohttp waits for open handlers)."""
    app[_CLOSING] = asyncio.Event()

    async def close_streams(_app: web.Application) -> None:
        app[_CLOSING].set()

    app.on_shutdown.append(close_streams)


class EventStream:
    """One SSE response: `open()` it, then `relay()` items from a queue and `send()` them."""

    def __init__(
        self,
        request: web.Request,
        *,
        keepalive_s: float = KEEPALIVE_S,
        lifetime_s: float = LIFETIME_S,
    ) -> None:
        self.request = request
        self.keepalive_s = keepalive_s
        self.lifetime_s = lifetime_s
        self.response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                # Proxies that buffer responses (nginx) pass this one through as it comes.
                "X-Accel-Buffering": "no",
            }
        )
        self._loop = asyncio.get_running_loop()
        self._last_write = self._ends = 0.0
        self.gone = False  # the client hung up

    async def open(self) -> web.StreamResponse:
        await self.response.prepare(self.request)
        self._ends = self._loop.time() + self.lifetime_s
        await self._write(f"retry: {RECONNECT_MS}\n: connected\n\n")
        return self.response

    async def send(self, event: str, data: str) -> None:
        await self._write(f"event: {event}\ndata: {data}\n\n")

    async def relay(self, queue: asyncio.Queue[T]) -> AsyncIterator[T]:
        """The queue's items as they come, keeping the connection alive in between, until the
        stream's lifetime ends, the app shuts down or the client hangs up."""
        closing = self.request.app.get(_CLOSING) or asyncio.Event()
        while not self.gone and not closing.is_set():
            now = self._loop.time()
            if now >= self._ends:
                return
            wait = min(self._ends, self._last_write + self.keepalive_s) - now
            getting = asyncio.ensure_future(queue.get())
            stopping = asyncio.ensure_future(closing.wait())
            try:
                await asyncio.wait(
                    {getting, stopping}, timeout=max(wait, 0.0), return_when="FIRST_COMPLETED"
                )
            finally:
                stopping.cancel()
                if not getting.done():
                    getting.cancel()
            if getting.done() and not getting.cancelled():
                yield getting.result()
            elif self._loop.time() >= self._last_write + self.keepalive_s:
                await self._write(": keep-alive\n\n")

    async def _write(self, text: str) -> None:
        if self.gone:
            return
        try:
            await self.response.write(text.encode())
        except ConnectionResetError:  # the client left: the stream ends, quietly
            self.gone = True
            return
        self._last_write = self._loop.time()
