"""The order service's application: carts, orders, and the queue-depth metric."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import aiohttp
from aiohttp import web
from prometheus_client import Gauge
from pydantic import Field

from services.kit import backends
from services.kit.app import METRICS, TOKENS, Dependency, create_app
from services.kit.auth import ServiceToken
from services.kit.db import Database
from services.kit.events import Consumer, OutboxRelay
from services.kit.exports import EVENTS_DEAD_LETTERS, ORDER_QUEUE_DEPTH, ORDERS_AWAITING_SHIPMENT
from services.kit.metrics import Metrics
from services.kit.redis import RedisStore
from services.kit.settings import Expect, SecretFile, Settings, SettingsError, read_secret
from services.kit.tasks import FINISH_S, every, finish_or_cancel
from services.order.carts import Carts
from services.order.fulfilment import AWAITING_SHIPMENT_AFTER_S, Warehouse
from services.order.orders import Orders
from services.order.saga import FULFILMENT_TOPICS, SAGA_TOPICS, Checkout, Peers
from services.order.soldout import SoldOut
from services.order.views import CARTS, ORDERS, SOLD_OUT, api


class OrderSettings(Settings):
    # Whom the saga calls (stacks.wiring sets them from the caller graph).
    inventory_url: Annotated[str | None, Expect("an http(s) URL")] = None
    payment_url: Annotated[str | None, Expect("an http(s) URL")] = None
    # The warehouse fulfilment hands confirmed orders to (an outside party, stacks.wiring).
    warehouse_url: Annotated[str | None, Expect("an http(s) URL")] = None
    warehouse_api_key_file: SecretFile | None = None
    warehouse_timeout_seconds: Annotated[float, Field(gt=0, le=30), Expect("seconds")] = 5.0
    # Run the outbox relay and the saga and fulfilment consumers in this process (a separate
    # worker Deployment can take them over with RUN_WORKERS=false on the API pods).
    run_workers: bool = True


def split_pool(pool_max: int) -> tuple[int, int]:
    """(API, workers) connections out of the process's DATABASE_POOL_MAX.

    With one pool, the saga's steps queued behind every API request for a connection: under
    a burst of orders the saga stalled (a flash sale's 100 reservations took 16 s) while the
    orders it should have been refusing piled up. The workers get a third, at least one;
    with a single connection there is nothing to split."""
    if pool_max < 2:
        return pool_max, 0
    workers = max(1, pool_max // 3)
    return pool_max - workers, workers


def init_app(settings: OrderSettings) -> web.Application:
    metrics = Metrics(settings.service_name)
    pool_max = settings.database_pool_max
    api_pool, workers_pool = split_pool(pool_max) if settings.run_workers else (pool_max, 0)
    database = backends.database(settings, metrics, pool_max=api_pool)
    redis = backends.redis(settings)
    sold_out = SoldOut(redis)
    dependencies: list[Dependency] = [database, redis, sold_out]
    workers_database = database
    if workers_pool:
        workers_database = backends.database(settings, metrics, workers_pool, role="workers")
        dependencies.append(workers_database)
    revocations = backends.revocations(settings, redis.client)
    app = create_app(settings, api, dependencies, metrics=metrics, revocations=revocations)
    orders = Orders(database)
    app[ORDERS] = orders
    app[SOLD_OUT] = sold_out
    app[CARTS] = Carts(database, redis.client, settings.cache_ttl_carts, metrics.registry)
    depth = Gauge(
        ORDER_QUEUE_DEPTH, "Orders whose checkout saga has not finished", registry=metrics.registry
    )

    awaiting = Gauge(
        ORDERS_AWAITING_SHIPMENT,
        f"Confirmed orders the warehouse has not taken after {AWAITING_SHIPMENT_AFTER_S} s",
        registry=metrics.registry,
    )

    async def measure() -> None:
        depth.set(await orders.queue_depth())
        awaiting.set(await orders.awaiting_shipment(AWAITING_SHIPMENT_AFTER_S))

    app.cleanup_ctx.append(every(5, measure, "order-queue-depth"))
    if settings.run_workers:
        missing = [
            (name.upper(), problem)
            for name, problem in (
                ("inventory_url", "missing; the checkout saga calls inventory"),
                ("payment_url", "missing; the checkout saga calls payment"),
                ("warehouse_url", "missing; fulfilment hands orders to the warehouse"),
                ("warehouse_api_key_file", "missing; the warehouse wants its API key"),
            )
            if getattr(settings, name) is None
        ]
        if missing:
            raise SettingsError(missing, settings.service_name)
        app.cleanup_ctx.append(_workers(settings, workers_database, redis))
    return app


def _workers(settings: OrderSettings, database: Database, redis: RedisStore):  # type: ignore[no-untyped-def]
    """The outbox relay, the checkout saga and fulfilment, as background tasks of the app."""
    assert settings.inventory_url and settings.payment_url and settings.warehouse_url
    assert settings.warehouse_api_key_file is not None
    peers = Peers(settings.inventory_url, settings.payment_url)
    warehouse_url, warehouse_key = settings.warehouse_url, settings.warehouse_api_key_file

    async def context(app: web.Application) -> AsyncIterator[None]:
        tokens = app[TOKENS]
        async with aiohttp.ClientSession() as http:
            warehouse = Warehouse(
                warehouse_url,
                read_secret(warehouse_key),
                http,
                app[METRICS].registry,
                timeout_s=settings.warehouse_timeout_seconds,
            )
            checkout = Checkout(database, http, peers, ServiceToken(tokens, "order"), warehouse)
            stop = asyncio.Event()
            consumers = [
                Consumer(redis.client, "order-saga", SAGA_TOPICS, checkout.handle),
                Consumer(redis.client, "fulfilment", FULFILMENT_TOPICS, checkout.handle),
            ]
            dead = Gauge(
                EVENTS_DEAD_LETTERS,
                "Events a consumer group gave up on, even after re-drives",
                ["group"],
                registry=app[METRICS].registry,
            )
            for consumer in consumers:
                dead.labels(consumer.group).set_function(lambda c=consumer: c.dead_letters)
            tasks = [
                asyncio.create_task(OutboxRelay(database, redis.client).run(stop)),
                *(asyncio.create_task(consumer.run(stop)) for consumer in consumers),
            ]
            yield
            stop.set()
            await finish_or_cancel(tasks, FINISH_S)

    return context
