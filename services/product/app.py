"""The product service's application: settings, backends, the popular-products refresher."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from aiohttp import web
from prometheus_client import Gauge
from pydantic import Field

from services.kit import backends
from services.kit.app import create_app
from services.kit.logs import get_logger
from services.kit.metrics import Metrics
from services.kit.settings import Expect, Settings
from services.product.catalog import Catalog, Ttls
from services.product.views import CATALOG, api
from stacks.services import SERVICES

log = get_logger(__name__)
# The HPA's custom metric (stacks/services.py): share of catalog reads the caches missed.
MISS_RATIO = SERVICES["product"].scaling.custom_metric.name  # type: ignore[union-attr]


class ProductSettings(Settings):
    popular_refresh_seconds: Annotated[int, Field(ge=10), Expect("seconds, >= 10")] = 300


def init_app(settings: ProductSettings) -> web.Application:
    metrics = Metrics(settings.service_name)
    database = backends.database(settings, metrics)
    cache = backends.cache(settings, metrics)
    app = create_app(settings, api, [database, cache], metrics=metrics)
    catalog = Catalog(
        database,
        cache,
        Ttls(
            catalog=settings.cache_ttl_catalog,
            search=settings.cache_ttl_search,
            popular=settings.cache_ttl_popular_products,
        ),
    )
    app[CATALOG] = catalog
    Gauge(
        MISS_RATIO,
        "Share of catalog reads that reached the database in the last minute",
        registry=metrics.registry,
    ).set_function(cache.miss_ratio)
    app.cleanup_ctx.append(_refresh_popular(catalog, settings.popular_refresh_seconds))
    return app


def _refresh_popular(catalog: Catalog, every_s: int):  # type: ignore[no-untyped-def]
    """Recompute the popular products in the background (seed: a background job). At
    shutdown the round under way finishes: a query cancelled mid-flight would hold its
    connection, and the pool's close waits for every connection."""

    async def loop(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await catalog.refresh_popular()
            except Exception as error:  # the next round tries again; reads fall back meanwhile
                log.warning("popular products refresh failed", error=str(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)

    async def context(app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(loop(stop))
        yield
        stop.set()
        await task

    return context
