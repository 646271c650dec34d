"""Background jobs of a service: run every N seconds for the app's lifetime.

At shutdown the round under way gets `FINISH_S` to finish rather than being cancelled at
once (a database query cancelled mid-flight can hold its connection); past that it is
cancelled, so a pod that got SIGTERM exits within its grace period whatever a job waits on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from aiohttp import web

from services.kit.logs import get_logger

log = get_logger(__name__)

Job = Callable[[], Awaitable[object]]
T = TypeVar("T")
# What a background round (or a consumer's batch) gets to finish at shutdown.
FINISH_S = 3.0


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
        await finish_or_cancel([task], FINISH_S)

    return context


async def finish_or_cancel(tasks: list[asyncio.Task[object]], seconds: float) -> None:
    """Wait up to `seconds` for `tasks` (told to stop already) to end, then cancel what is
    left and wait for that too, as long again: shutdown is bounded. Their errors are logged."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=seconds)
    for task in pending:
        log.warning("background task cancelled at shutdown", task=task.get_name(), waited_s=seconds)
        task.cancel()
    if pending:
        _, stuck = await asyncio.wait(pending, timeout=seconds)
        for task in stuck:
            log.error("background task ignored its cancellation", task=task.get_name())
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.warning(
                "background task failed", task=task.get_name(), error=repr(task.exception())
            )


async def finish_even_if_cancelled(work: Awaitable[T]) -> T:
    """Await `work`; if the caller is cancelled (its client hung up, the server is stopping),
    `work` still runs to the end instead of stopping halfway.

    For steps that move money or stock: a half-done step leaves state a retry must untangle,
    and a database query cancelled mid-flight through PgPool-II can hold its connection. The
    caller still sees the cancellation; a failure of the orphaned work is logged."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_log_orphan_failure)
        raise


def _log_orphan_failure(task: asyncio.Future[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("work finished after its caller left, and failed", error=repr(task.exception()))
