"""The product service's application: settings, backends, the popular-products refresher."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram
from pydantic import Field

from services.kit import backends
from services.kit.app import create_app
from services.kit.exports import (
    PRODUCT_CACHE_MISS_RATIO,
    PRODUCT_SEARCH_SELECTION_POSITION,
    PRODUCT_SEARCHES,
    SEARCH_SELECTION_BUCKETS,
)
from services.kit.metrics import Metrics
from services.kit.settings import Expect, Settings
from services.kit.tasks import every
from services.product.catalog import Catalog, Ttls
from services.product.views import CATALOG, SEARCHES, SELECTION_ACTIONS, SELECTIONS, api


class ProductSettings(Settings):
    popular_refresh_seconds: Annotated[int, Field(ge=10), Expect("seconds, >= 10")] = 300


def init_app(settings: ProductSettings) -> web.Application:
    metrics = Metrics(settings.service_name)
    database = backends.database(settings, metrics)
    cache = backends.cache(settings, metrics)
    revocations = backends.revocations(settings)  # a client of its own: the cache's degrades
    app = create_app(settings, api, [database, cache], metrics=metrics, revocations=revocations)
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
    searches = Counter(
        PRODUCT_SEARCHES,
        "Shoppers' searches (their first page), by whether they found anything",
        ["result"],
        registry=metrics.registry,
    )
    for result in ("found", "empty"):  # both series exist from the start, at 0
        searches.labels(result)
    app[SEARCHES] = searches
    selections = Histogram(
        PRODUCT_SEARCH_SELECTION_POSITION,
        "Where the product a shopper chose stood in the search results (1: the first hit)",
        ["action"],
        buckets=SEARCH_SELECTION_BUCKETS,
        registry=metrics.registry,
    )
    for action in SELECTION_ACTIONS:
        selections.labels(action)
    app[SELECTIONS] = selections
    Gauge(
        PRODUCT_CACHE_MISS_RATIO,
        "Share of catalog reads that reached the database in the last minute",
        registry=metrics.registry,
    ).set_function(cache.miss_ratio)
    # Seed: popular products are refreshed by a background job.
    app.cleanup_ctx.append(
        every(settings.popular_refresh_seconds, catalog.refresh_popular, "popular-products")
    )
    return app
