"""Background jobs of a service: run every N seconds for the app's lifetime.

At shutdown the round under way finishes rather than being cancelled: a database query
cancelled mid-flight holds its connection, and closing the pool waits for every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from services.kit.logs import get_logger

log = get_logger(__name__)

Job = Callable[[], Awaitable[object]]


def every(seconds: float, job: Job, name: str) -> Callable[[web.Application], AsyncIterator[None]]:
    """A `cleanup_ctx` entry running `job` now and then every `seconds`; a failing round is
    logged and the next one tries again."""

    async def loop(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await job()
            except Exception as error:
                log.warning("background job failed", job=name, error=str(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)

    async def context(app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(loop(stop), name=name)
        yield
        stop.set()
        await task

    return context
