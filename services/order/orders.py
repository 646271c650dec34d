"""Orders: placed once per Idempotency-Key, priced from the catalog, started on their saga.

Placing an order is one transaction: the idempotency key, the order (status `pending`), its
items priced from `products` at this moment, and the `order.placed` event in the outbox. The
same key again returns the same order; the same key with a different request (any of its
fields) is refused, naming the fields that differ.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.kit.db import Database

ACTIVE = ("pending", "stock_reserved", "paid")  # the saga is still working on these


# $1 user, $2 Idempotency-Key, $3 the request's digests, $4 the SKUs: claims the key (waiting for
# a concurrent twin's transaction, if any) and prices the items, in one round trip. Always one
# row at least; the product columns are NULL when no SKU matched.
CLAIM_AND_PRICE = """
WITH claim AS (
    INSERT INTO idempotency_keys (user_id, key, request_hash) VALUES ($1, $2, $3)
    ON CONFLICT (user_id, key) DO NOTHING RETURNING key
)
SELECT EXISTS (SELECT 1 FROM claim) AS claimed, p.id, p.sku, p.price_cents, p.currency
  FROM (SELECT 1) AS one
  LEFT JOIN products p ON p.sku = ANY($4::text[]) AND p.active
"""

# $1 user, $2 total, $3..$6 the lines (sku, product id, quantity, unit price) as arrays, $7 the
# Idempotency-Key, $8 the rest of the order.placed payload: the order, its lines, the key's
# answer and the saga's first event in one round trip. Returns the order.
PLACE = """
WITH o AS (
    INSERT INTO orders (user_id, total_cents) VALUES ($1, $2)
    RETURNING id, status, total_cents, currency, created_at, updated_at, shipment_id
), lines AS (
    INSERT INTO order_items
        (order_id, order_created_at, sku, product_id, quantity, unit_price_cents)
    SELECT o.id, o.created_at, l.sku, l.product_id, l.quantity, l.unit_price_cents
      FROM o, unnest($3::text[], $4::bigint[], $5::int[], $6::bigint[])
           AS l(sku, product_id, quantity, unit_price_cents)
), answer AS (
    UPDATE idempotency_keys k SET order_id = o.id, order_created_at = o.created_at
      FROM o WHERE k.user_id = $1 AND k.key = $7
), event AS (
    INSERT INTO outbox (topic, key, payload)
    SELECT 'order.placed', o.id::text,
           $8::jsonb || jsonb_build_object(
               'id', o.id, 'status', o.status, 'total_cents', o.total_cents,
               'currency', o.currency, 'created_at', o.created_at, 'updated_at', o.updated_at)
      FROM o
)
SELECT * FROM o
"""


class KeyReused(Exception):
    """The Idempotency-Key was used for a different request: `fields` are those that differ."""

    def __init__(self, fields: list[str]) -> None:
        super().__init__(", ".join(fields))
        self.fields = fields


class UnknownProducts(Exception):
    def __init__(self, skus: list[str]) -> None:
        super().__init__(", ".join(skus))
        self.skus = skus


@dataclass(frozen=True)
class Placed:
    order: dict[str, Any]
    created: bool  # False when the key had already placed it


def request_digests(request: dict[str, Any]) -> dict[str, str]:
    """A digest of each field of the request, as stored with its key: a retry must repeat every
    one (the digest, not the value: the payment token stays out of this table)."""
    return {
        name: hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
        for name, value in request.items()
    }


def _stored_digests(stored: str) -> dict[str, str]:
    try:
        found = json.loads(stored)
    except ValueError:
        found = None
    # Keys claimed before the digests were per field held one hash of the items: no field of a
    # new request can be shown to match it.
    return found if isinstance(found, dict) else {}


def _order(row: asyncpg.Record, items: list[asyncpg.Record]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "status": row["status"],
        "total_cents": row["total_cents"],
        "currency": row["currency"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
        "shipment_id": row["shipment_id"],
        "items": [
            {"sku": i["sku"], "quantity": i["quantity"], "unit_price_cents": i["unit_price_cents"]}
            for i in items
        ],
    }


class Orders:
    def __init__(self, db: Database):
        self.db = db

    async def place(
        self,
        user_id: int,
        key: str,
        items: dict[str, int],
        payment_token: str,
        *,
        from_cart: bool = False,
    ) -> Placed:
        """Place the order of `items`, once per key. `from_cart`: the request named no items
        (they are the cart's), which is another request than the same items named."""
        digests = request_digests(
            {"items": None if from_cart else items, "payment_token": payment_token}
        )
        async with self.db.transaction() as connection:
            rows = await connection.fetch(
                CLAIM_AND_PRICE, user_id, key, json.dumps(digests), list(items)
            )
            if not rows[0]["claimed"]:
                # A concurrent twin may still be inside its transaction: the row lock waits
                # for it, so the answer is always the order it committed.
                known = await connection.fetchrow(
                    """SELECT request_hash, order_id, order_created_at FROM idempotency_keys
                       WHERE user_id = $1 AND key = $2 FOR SHARE""",
                    user_id,
                    key,
                )
                stored = _stored_digests(known["request_hash"])
                differ = [name for name, digest in digests.items() if stored.get(name) != digest]
                if differ:
                    raise KeyReused(differ)
                found = await self._load(connection, known["order_id"], known["order_created_at"])
                return Placed(found, created=False)
            prices = {r["sku"]: r for r in rows if r["sku"] is not None}
            missing = sorted(set(items) - set(prices))
            if missing:
                raise UnknownProducts(missing)
            total = sum(prices[sku]["price_cents"] * quantity for sku, quantity in items.items())
            lines = [
                (sku, prices[sku]["id"], quantity, prices[sku]["price_cents"])
                for sku, quantity in sorted(items.items())
            ]
            items_out = [
                {"sku": sku, "quantity": q, "unit_price_cents": price} for sku, _, q, price in lines
            ]
            order = await connection.fetchrow(
                PLACE,
                user_id,
                total,
                [line[0] for line in lines],
                [line[1] for line in lines],
                [line[2] for line in lines],
                [line[3] for line in lines],
                key,
                # The saga's input: the order, and the provider token the shopper paid with.
                json.dumps(
                    {"user_id": user_id, "payment_token": payment_token, "items": items_out}
                ),
            )
            placed = _order(order, items_out)
        return Placed(placed, created=True)

    async def key_used(self, user_id: int, key: str) -> bool:
        """Whether the shopper's Idempotency-Key has been used (read on the primary)."""
        found = await self.db.fetchval(
            "SELECT 1 FROM idempotency_keys WHERE user_id = $1 AND key = $2",
            user_id,
            key,
            fresh=True,
        )
        return found is not None

    async def get(self, user_id: int, order_id: int, fresh: bool = True) -> dict[str, Any] | None:
        row = await self.db.fetchrow(
            """SELECT id, created_at FROM orders WHERE id = $1 AND user_id = $2""",
            order_id,
            user_id,
            fresh=fresh,
        )
        if row is None:
            return None
        async with self.db.transaction() as connection:
            return await self._load(connection, row["id"], row["created_at"])

    async def history(
        self, user_id: int, before: datetime | None, limit: int
    ) -> list[dict[str, Any]]:
        """Newest first, across monthly partitions; plain reads (replicas)."""
        rows = await self.db.fetch(
            """SELECT o.id, o.status, o.total_cents, o.currency, o.created_at, o.updated_at,
                      o.shipment_id, coalesce(jsonb_agg(jsonb_build_object(
                          'sku', i.sku, 'quantity', i.quantity,
                          'unit_price_cents', i.unit_price_cents) ORDER BY i.sku)
                        FILTER (WHERE i.sku IS NOT NULL), '[]') AS items
               FROM orders o
               LEFT JOIN order_items i ON i.order_id = o.id AND i.order_created_at = o.created_at
               WHERE o.user_id = $1 AND ($2::timestamptz IS NULL OR o.created_at < $2)
               GROUP BY o.id, o.created_at
               ORDER BY o.created_at DESC, o.id DESC LIMIT $3""",
            user_id,
            before,
            limit,
        )
        return [
            {
                **{k: row[k] for k in ("id", "status", "total_cents", "currency", "shipment_id")},
                "created_at": row["created_at"].isoformat(),
                "updated_at": row["updated_at"].isoformat(),
                "items": json.loads(row["items"])
                if isinstance(row["items"], str)
                else row["items"],
            }
            for row in rows
        ]

    async def queue_depth(self) -> int:
        """Orders the saga has not finished (the HPA's order_queue_depth)."""
        return await self.db.fetchval(
            "SELECT count(*) FROM orders WHERE status = ANY($1::text[])", list(ACTIVE)
        )

    async def awaiting_shipment(self, older_than_s: float) -> int:
        """Confirmed orders the warehouse has not taken `older_than_s` after confirmation."""
        return await self.db.fetchval(
            """SELECT count(*) FROM orders WHERE status = 'confirmed'
               AND updated_at < now() - make_interval(secs => $1)""",
            older_than_s,
        )

    @staticmethod
    async def _load(
        connection: asyncpg.Connection, order_id: int, created_at: datetime
    ) -> dict[str, Any]:
        row = await connection.fetchrow(
            """SELECT id, status, total_cents, currency, created_at, updated_at, shipment_id
               FROM orders WHERE id = $1 AND created_at = $2""",
            order_id,
            created_at,
        )
        items = await connection.fetch(
            """SELECT sku, quantity, unit_price_cents FROM order_items
               WHERE order_id = $1 AND order_created_at = $2 ORDER BY sku""",
            order_id,
            created_at,
        )
        return _order(row, items)
