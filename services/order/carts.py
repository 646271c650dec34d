"""Carts: in Redis with the seed's 7-day TTL, written through to PostgreSQL.

Every change goes to the database first (the durable copy) and then to Redis (the fast one);
a read that misses Redis (expired, or Redis lost its data) rebuilds the entry from the
database, so losing Redis loses no cart.

Two counters measure cart abandonment (the recording `cart_abandonment_ratio`): a cart is
*started* when a line goes into a cart that was empty, and *checked out* when an order is
placed from it.
"""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from services.kit.db import Database
from services.kit.exports import CARTS_CHECKED_OUT, CARTS_STARTED
from services.kit.logs import get_logger

log = get_logger(__name__)
MAX_LINES = 100
# $1 user, $2 sku, $3 quantity (0: remove), $4 MAX_LINES. The service only ever stores
# objects ({sku: quantity}) in carts.items. A line is added or changed only for a SKU the
# catalog sells (else checkout would fail until it was removed); removing one needs no such
# check, since its product may have been withdrawn after it was added. It adds no new line to
# a full cart. `known` false: not a product on sale; `items` NULL (and known): the cart is full.
# `was_empty`: the cart held nothing before (`prior` reads the statement's snapshot, taken
# before `saved` wrote).
SET_LINE = """
WITH prior AS (
    SELECT items FROM carts WHERE user_id = $1
), sold AS (
    SELECT $3::int = 0 OR EXISTS (SELECT 1 FROM products WHERE sku = $2::text AND active) AS known
), saved AS (
    INSERT INTO carts AS c (user_id, items, updated_at)
    SELECT $1, CASE WHEN $3::int = 0 THEN '{}'::jsonb
                    ELSE jsonb_build_object($2::text, $3::int) END,
           now()
      FROM sold WHERE known
    ON CONFLICT (user_id) DO UPDATE
       SET items = CASE WHEN $3::int = 0 THEN c.items - $2::text
                        ELSE c.items || jsonb_build_object($2::text, $3::int) END,
           updated_at = now()
     WHERE $3::int = 0 OR c.items ? $2::text
        OR (SELECT count(*) FROM jsonb_object_keys(c.items)) < $4::int
    RETURNING items
)
SELECT (SELECT known FROM sold) AS known, (SELECT items FROM saved) AS items,
       coalesce((SELECT items = '{}'::jsonb FROM prior), true) AS was_empty
"""


def _key(user_id: int) -> str:
    return f"cart:{{{user_id}}}"


class Carts:
    def __init__(
        self,
        db: Database,
        redis: RedisCluster | Redis,
        ttl_s: int,
        registry: CollectorRegistry | None = None,
    ):
        self.db = db
        self.redis = redis
        self.ttl_s = ttl_s
        registry = registry or CollectorRegistry()
        self.started = Counter(
            CARTS_STARTED, "Lines put into an empty cart (a cart begun)", registry=registry
        )
        self.checked_out = Counter(
            CARTS_CHECKED_OUT, "Orders placed from a cart (a cart checked out)", registry=registry
        )

    async def get(self, user_id: int) -> dict[str, int]:
        """The cart as {sku: quantity}."""
        try:
            cached = await self.redis.get(_key(user_id))
        except Exception as error:  # Redis down: the database has every cart
            log.warning("cart cache unavailable", error=str(error))
            cached = None
        if cached is not None:
            return json.loads(cached)
        stored = await self.db.fetchval(
            "SELECT items FROM carts WHERE user_id = $1", user_id, fresh=True
        )
        items = _items(stored)
        await self._cache(user_id, items)
        return items

    async def set_line(self, user_id: int, sku: str, quantity: int) -> dict[str, int]:
        """Set one line's quantity (0 removes it); returns the whole cart.

        One statement, atomic on the cart's row (a read-modify-write in a transaction took
        four round trips and held the row lock across them). ValueError says why a line was
        refused: a SKU no product on sale has, or a full cart."""
        row = await self.db.write_fetchrow(SET_LINE, user_id, sku, quantity, MAX_LINES)
        assert row is not None  # the statement always answers one row
        if not row["known"]:
            raise ValueError(f"no product on sale has the SKU {sku}")
        if row["items"] is None:
            raise ValueError(f"a cart holds at most {MAX_LINES} lines")
        current = _items(row["items"])
        if row["was_empty"] and current:
            self.started.inc()
        await self._cache(user_id, current)
        return current

    async def check_out(self, user_id: int) -> None:
        """An order was placed from the cart: it is emptied, and counted as checked out."""
        await self.clear(user_id)
        self.checked_out.inc()

    async def clear(self, user_id: int) -> None:
        await self.db.execute("DELETE FROM carts WHERE user_id = $1", user_id)
        try:
            await self.redis.delete(_key(user_id))
        except Exception as error:
            log.warning("cart cache unavailable", error=str(error))

    async def _cache(self, user_id: int, items: dict[str, int]) -> None:
        try:
            await self.redis.set(_key(user_id), json.dumps(items), ex=self.ttl_s)
        except Exception as error:  # the write is durable; the cache refills on the next read
            log.warning("cart cache unavailable", error=str(error))


def _items(stored: Any) -> dict[str, int]:
    if stored is None:
        return {}
    return json.loads(stored) if isinstance(stored, str) else dict(stored)
