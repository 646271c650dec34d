"""Stock that can never be oversold, and its immutable audit trail.

Every change to `inventory` is one SQL statement that also writes its `inventory_events` row
(and, when stock falls under its threshold, a low-stock event in the outbox): a data-modifying
CTE, so the change and its record commit together or not at all. A decrement is a conditional
`UPDATE ... WHERE available >= n`: under any concurrency the row lock serialises the updates
and the condition is re-checked on the newest row, so stock never goes below zero and no
read-then-write race exists. The current stock is always the sum of its events' deltas.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Counter

from services.kit.db import Database
from services.kit.exports import INVENTORY_UNITS_SOLD

# One statement: move `n` from available to reserved, record the event and the reservation
# ($4 its id, $5 the order, $6 its expiry), and queue a low-stock alert when the stock falls
# under its threshold. One round trip under the SKU's row lock: in a flash sale every
# reservation queues for that lock, so its hold time is the sale's pace.
RESERVE = """
WITH changed AS (
    UPDATE inventory
       SET available = available - $2, reserved = reserved + $2,
           version = version + 1, updated_at = now()
     WHERE sku = $1 AND available >= $2
 RETURNING sku, available, reserved, low_stock_threshold, version
), event AS (
    INSERT INTO inventory_events (sku, kind, delta, available_after, reference)
    SELECT sku, 'reserved', -$2, available, $3 FROM changed
), alert AS (
    INSERT INTO outbox (topic, key, payload)
    SELECT 'inventory.low_stock', sku,
           jsonb_build_object('sku', sku, 'available', available, 'threshold', low_stock_threshold)
      FROM changed WHERE available < low_stock_threshold
), held AS (
    INSERT INTO reservations (id, order_id, sku, quantity, expires_at)
    SELECT $4, $5, sku, $2, $6 FROM changed
 RETURNING id, quantity, status, expires_at
)
SELECT sku, available, reserved, version, id, quantity, status, expires_at FROM changed, held
"""

# Give back what a reservation held (released, or expired).
RELEASE = """
WITH changed AS (
    UPDATE inventory
       SET available = available + $2, reserved = reserved - $2,
           version = version + 1, updated_at = now()
     WHERE sku = $1
 RETURNING sku, available, reserved, version
), event AS (
    INSERT INTO inventory_events (sku, kind, delta, available_after, reference)
    SELECT sku, $4, $2, available, $3 FROM changed
)
SELECT sku, available, reserved, version FROM changed
"""

# A paid order: what was reserved is sold (available was already decremented).
SELL = """
WITH changed AS (
    UPDATE inventory
       SET reserved = reserved - $2, version = version + 1, updated_at = now()
     WHERE sku = $1
 RETURNING sku, available, reserved, version
), event AS (
    INSERT INTO inventory_events (sku, kind, delta, available_after, reference)
    SELECT sku, 'sold', 0, available, $3 FROM changed
)
SELECT sku, available, reserved, version FROM changed
"""

# An administrator sets the stock, if nobody changed it since they read it (optimistic lock).
ADJUST = """
WITH old AS (
    SELECT sku, available FROM inventory WHERE sku = $1 AND version = $3 FOR UPDATE
), changed AS (
    UPDATE inventory i
       SET available = $2, version = i.version + 1, updated_at = now()
      FROM old WHERE i.sku = old.sku
 RETURNING i.sku, i.available, i.reserved, i.version, old.available AS before
), event AS (
    INSERT INTO inventory_events (sku, kind, delta, available_after, reference)
    SELECT sku, 'adjusted', available - before, available, $4 FROM changed
)
SELECT sku, available, reserved, version FROM changed
"""


@dataclass(frozen=True)
class Level:
    sku: str
    available: int
    reserved: int
    version: int

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


class InsufficientStock(Exception):
    def __init__(self, level: Level) -> None:
        super().__init__(level.sku)
        self.sku = level.sku
        self.level = level  # what there is (republished: the order service's sold-out hint)


class UnknownSku(Exception):
    def __init__(self, sku: str) -> None:
        super().__init__(sku)
        self.sku = sku


class VersionMismatch(Exception):
    pass


def _level(row: asyncpg.Record) -> Level:
    return Level(row["sku"], row["available"], row["reserved"], row["version"])


class Stock:
    def __init__(self, db: Database, registry: CollectorRegistry | None = None):
        self.db = db
        self.units_sold = Counter(
            INVENTORY_UNITS_SOLD,
            "Units whose reservations became sales (an order paid)",
            registry=registry or CollectorRegistry(),
        )

    async def level(self, sku: str, fresh: bool = False) -> Level | None:
        row = await self.db.fetchrow(
            "SELECT sku, available, reserved, version FROM inventory WHERE sku = $1",
            sku,
            fresh=fresh,
        )
        return None if row is None else _level(row)

    async def reserve(
        self, order_id: int, items: list[tuple[str, int]], ttl: timedelta
    ) -> tuple[list[dict[str, Any]], list[Level]]:
        """Hold every item for the order, or none of them (InsufficientStock names the SKU).

        Idempotent per order: a second call returns the reservations the first one made."""
        reference = f"order:{order_id}"
        expires = datetime.now(UTC) + ttl
        async with self.db.transaction() as connection:
            # One reservation set per order, even when two deliveries of the event race.
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", reference)
            existing = await connection.fetch(
                """SELECT id, sku, quantity, status, expires_at FROM reservations
                   WHERE order_id = $1""",
                order_id,
            )
            if existing:
                return [_reservation(r) for r in existing], []
            levels, held = [], []
            # A stable order of locks: two orders for the same SKUs never deadlock.
            for sku, quantity in sorted(items):
                row = await connection.fetchrow(
                    RESERVE, sku, quantity, reference, uuid.uuid4(), order_id, expires
                )
                if row is None:
                    known = await connection.fetchrow(
                        "SELECT sku, available, reserved, version FROM inventory WHERE sku = $1",
                        sku,
                    )
                    raise UnknownSku(sku) if known is None else InsufficientStock(_level(known))
                levels.append(_level(row))
                held.append(row)
        return [_reservation(r) for r in held], levels

    async def commit(self, order_id: int) -> list[Level]:
        """The order is paid: its held reservations become sales (idempotent)."""
        levels, units = await self._settle(order_id, "committed", SELL, None)
        self.units_sold.inc(units)  # after the transaction: only what was really sold
        return levels

    async def release(self, order_id: int, kind: str = "released") -> list[Level]:
        """Give the order's held stock back (compensation; idempotent)."""
        levels, _ = await self._settle(order_id, "released", RELEASE, kind)
        return levels

    async def units_on_hand(self) -> int:
        """Every unit in the warehouses, free or reserved (a replica's answer will do)."""
        return await self.db.fetchval(
            "SELECT coalesce(sum(available + reserved), 0)::bigint FROM inventory"
        )

    async def release_expired(self) -> list[Level]:
        """Release every reservation past its expiry (orders that never completed)."""
        rows = await self.db.fetch(
            """SELECT DISTINCT order_id FROM reservations
               WHERE status = 'held' AND expires_at < now()""",
            fresh=True,
        )
        levels: list[Level] = []
        for row in rows:
            levels += await self.release(row["order_id"])
        return levels

    async def adjust(self, sku: str, available: int, version: int, actor: str) -> Level:
        async with self.db.transaction() as connection:
            row = await connection.fetchrow(ADJUST, sku, available, version, f"admin:{actor}")
            if row is None:
                if await connection.fetchval("SELECT 1 FROM inventory WHERE sku = $1", sku) is None:
                    raise UnknownSku(sku)
                raise VersionMismatch(sku)
        return _level(row)

    async def events(self, sku: str, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            """SELECT id, kind, delta, available_after, reference, created_at
               FROM inventory_events WHERE sku = $1 ORDER BY id DESC LIMIT $2""",
            sku,
            limit,
            fresh=True,
        )
        return [{**dict(r), "created_at": r["created_at"].isoformat()} for r in rows]

    async def rebuilt(self, sku: str) -> int | None:
        """The stock as its events tell it: the sum of every delta since the first."""
        return await self.db.fetchval(
            "SELECT sum(delta)::int FROM inventory_events WHERE sku = $1", sku, fresh=True
        )

    async def _settle(
        self, order_id: int, status: str, statement: str, kind: str | None
    ) -> tuple[list[Level], int]:
        """The order's held reservations settled with `statement`: the levels, and the units."""
        reference = f"order:{order_id}"
        levels, units = [], 0
        async with self.db.transaction() as connection:
            settled = await connection.fetch(
                """UPDATE reservations SET status = $2
                   WHERE order_id = $1 AND status = 'held' RETURNING sku, quantity""",
                order_id,
                status,
            )
            for row in sorted(settled, key=lambda r: r["sku"]):
                args = [row["sku"], row["quantity"], reference] + ([kind] if kind else [])
                levels.append(_level(await connection.fetchrow(statement, *args)))
                units += row["quantity"]
        return levels, units


def _reservation(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "sku": row["sku"],
        "quantity": row["quantity"],
        "status": row["status"],
        "expires_at": row["expires_at"].isoformat(),
    }


def feed_message(level: Level) -> str:
    return json.dumps(level.as_dict())
