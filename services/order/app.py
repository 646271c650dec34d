"""The order service's application: carts, orders, and the queue-depth metric."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import Gauge

from services.kit import backends
from services.kit.app import create_app
from services.kit.metrics import Metrics
from services.kit.settings import Settings
from services.kit.tasks import every
from services.order.carts import Carts
from services.order.orders import Orders
from services.order.views import CARTS, ORDERS, api
from stacks.services import SERVICES

# The HPA's custom metric (stacks/services.py): orders the saga has not finished.
QUEUE_DEPTH = SERVICES["order"].scaling.custom_metric.name  # type: ignore[union-attr]


class OrderSettings(Settings):
    pass


def init_app(settings: OrderSettings) -> web.Application:
    metrics = Metrics(settings.service_name)
    database = backends.database(settings, metrics)
    redis = backends.redis(settings)
    app = create_app(settings, api, [database, redis], metrics=metrics)
    orders = Orders(database)
    app[ORDERS] = orders
    app[CARTS] = Carts(database, redis.client, settings.cache_ttl_carts)
    depth = Gauge(
        QUEUE_DEPTH, "Orders whose checkout saga has not finished", registry=metrics.registry
    )

    async def measure() -> None:
        depth.set(await orders.queue_depth())

    app.cleanup_ctx.append(every(5, measure, "order-queue-depth"))
    return app
