"""The inventory service's application: stock, the feed, and the reservation sweeper."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from aiohttp import web
from pydantic import Field

from services.inventory.feed import StockFeed
from services.inventory.stock import Stock
from services.inventory.views import FEED, STOCK, api
from services.kit import backends
from services.kit.app import create_app
from services.kit.logs import get_logger
from services.kit.metrics import Metrics
from services.kit.settings import Expect, Settings

log = get_logger(__name__)


class InventorySettings(Settings):
    # How often held reservations past their expiry go back on the shelf.
    reservation_sweep_seconds: Annotated[int, Field(ge=1), Expect("seconds, >= 1")] = 10


def init_app(settings: InventorySettings) -> web.Application:
    metrics = Metrics(settings.service_name)
    database = backends.database(settings, metrics)
    redis = backends.redis(settings)
    feed = StockFeed(redis)
    app = create_app(settings, api, [database, redis, feed], metrics=metrics)
    stock = Stock(database)
    app[STOCK] = stock
    app[FEED] = feed
    app.cleanup_ctx.append(_sweeper(stock, feed, settings.reservation_sweep_seconds))
    return app


def _sweeper(
    stock: Stock, feed: StockFeed, every_s: int
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Release expired reservations; at shutdown the sweep under way finishes first."""

    async def loop(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                for level in await stock.release_expired():
                    await feed.publish(level)
            except Exception as error:  # the next sweep tries again
                log.warning("reservation sweep failed", error=str(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)

    async def context(app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(loop(stop))
        yield
        stop.set()
        await task

    return context
