"""The inventory service's application: stock, the feed, and the reservation sweeper."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field

from services.inventory.feed import StockFeed
from services.inventory.stock import Stock
from services.inventory.views import FEED, STOCK, api
from services.kit import backends
from services.kit.app import create_app
from services.kit.metrics import Metrics
from services.kit.settings import Expect, Settings
from services.kit.streams import LIFETIME_S
from services.kit.tasks import every


class InventorySettings(Settings):
    # How often held reservations past their expiry go back on the shelf.
    reservation_sweep_seconds: Annotated[int, Field(ge=1), Expect("seconds, >= 1")] = 10
    # How long one client's live feed lasts before its EventSource reconnects (spreads streams
    # over new pods after a scale-up).
    feed_lifetime_seconds: Annotated[int, Field(ge=1), Expect("seconds, >= 1")] = int(LIFETIME_S)


def init_app(settings: InventorySettings) -> web.Application:
    metrics = Metrics(settings.service_name)
    database = backends.database(settings, metrics)
    redis = backends.redis(settings)
    feed = StockFeed(redis, lifetime_s=settings.feed_lifetime_seconds)
    revocations = backends.revocations(settings, redis.client)
    app = create_app(
        settings, api, [database, redis, feed], metrics=metrics, revocations=revocations
    )
    stock = Stock(database)
    app[STOCK] = stock
    app[FEED] = feed

    async def sweep() -> None:
        for level in await stock.release_expired():
            await feed.publish(level)

    app.cleanup_ctx.append(every(settings.reservation_sweep_seconds, sweep, "reservation-sweeper"))
    return app
