"""The inventory service's application: stock, the feed, and the reservation sweeper."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from prometheus_client import Gauge
from pydantic import Field

from services.inventory.feed import StockFeed
from services.inventory.stock import Stock
from services.inventory.views import FEED, STOCK, api
from services.kit import backends
from services.kit.app import create_app
from services.kit.exports import INVENTORY_UNITS_ON_HAND
from services.kit.metrics import Metrics
from services.kit.settings import Expect, Settings
from services.kit.streams import LIFETIME_S
from services.kit.tasks import every


class InventorySettings(Settings):
    # How often held reservations past their expiry go back on the shelf.
    reservation_sweep_seconds: Annotated[int, Field(ge=1), Expect("seconds, >= 1")] = 10
    # How often the units on hand are summed for the turnover metric (a scan of `inventory`).
    on_hand_refresh_seconds: Annotated[int, Field(ge=5), Expect("seconds, >= 5")] = 60
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
    stock = Stock(database, metrics.registry)
    app[STOCK] = stock
    app[FEED] = feed
    on_hand = Gauge(
        INVENTORY_UNITS_ON_HAND,
        "Units in the warehouses, free or reserved",
        registry=metrics.registry,
    )

    async def count_on_hand() -> None:
        on_hand.set(await stock.units_on_hand())

    async def sweep() -> None:
        for level in await stock.release_expired():
            await feed.publish(level)

    app.cleanup_ctx.append(every(settings.reservation_sweep_seconds, sweep, "reservation-sweeper"))
    app.cleanup_ctx.append(every(settings.on_hand_refresh_seconds, count_on_hand, "units-on-hand"))
    return app
