"""The live stock feed: levels published on Redis pub/sub, fanned out to SSE clients.

Each instance keeps one subscription (not one per client) and hands every message to the
queues of its connected clients; a slow client drops its oldest updates rather than holding
up the others. Cluster pub/sub is broadcast, so a level published by any instance on any node
reaches every subscriber."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from services.inventory.stock import Level, feed_message
from services.kit.logs import get_logger
from services.kit.redis import ChannelListener, RedisStore
from services.kit.streams import LIFETIME_S

CHANNEL = "inventory:stock"
QUEUE_SIZE = 100

log = get_logger(__name__)


class StockFeed(ChannelListener):
    """A dependency of the app: its check never fails (the feed is best effort)."""

    name = "stock-feed"

    def __init__(self, redis: RedisStore, lifetime_s: float = LIFETIME_S):
        super().__init__(redis, CHANNEL)
        self.lifetime_s = lifetime_s  # how long one client's stream lasts before it reconnects
        self.clients: set[asyncio.Queue[dict[str, Any]]] = set()

    async def publish(self, level: Level) -> None:
        try:
            await self.redis.client.execute_command("PUBLISH", CHANNEL, feed_message(level))
        except Exception as error:  # the stock changed; only its broadcast is lost
            log.warning("stock update not published", sku=level.sku, error=str(error))

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self.clients.add(queue)
        try:
            yield queue
        finally:
            self.clients.discard(queue)

    def heard(self, level: dict[str, Any]) -> None:
        """Every level to every connected client."""
        for queue in self.clients:
            if queue.full():
                queue.get_nowait()  # a slow client loses its oldest update, not the newest
            queue.put_nowait(level)
