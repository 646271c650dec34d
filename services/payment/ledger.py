"""Our record of every payment: one row per Idempotency-Key, moving pending -> authorized ->
captured (or failed, voided, refunded). The row is written before the provider is called and
updated after each step, so a retry with the same key resumes where the last attempt stopped
and the keys sent to providers (derived from ours and the step) never charge twice."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from services.kit.db import Database

COLUMNS = "id, order_id, provider, provider_ref, amount_cents, currency, status, failure_reason"


def _payment(row: asyncpg.Record) -> dict[str, Any]:
    return {**dict(row), "id": str(row["id"])}


class Ledger:
    def __init__(self, db: Database):
        self.db = db

    async def open(
        self, key: str, order_id: int, amount_cents: int, currency: str
    ) -> tuple[dict[str, Any], bool]:
        """The payment for `key`, created pending if new; the flag says whether the request
        matches the one the key was first used with."""
        async with self.db.transaction() as connection:
            row = await connection.fetchrow(
                f"""INSERT INTO payments (id, order_id, provider, idempotency_key, amount_cents,
                                          currency, status)
                    VALUES ($1, $2, 'pending', $3, $4, $5, 'pending')
                    ON CONFLICT (idempotency_key) DO NOTHING RETURNING {COLUMNS}""",
                uuid.uuid4(),
                order_id,
                key,
                amount_cents,
                currency,
            )
            if row is None:
                row = await connection.fetchrow(
                    f"SELECT {COLUMNS} FROM payments WHERE idempotency_key = $1 FOR UPDATE", key
                )
        same = (row["order_id"], row["amount_cents"], row["currency"]) == (
            order_id,
            amount_cents,
            currency,
        )
        return _payment(row), same

    async def update(self, payment_id: str, **fields: Any) -> dict[str, Any]:
        sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(fields, start=2))
        async with self.db.transaction() as connection:
            row = await connection.fetchrow(
                f"UPDATE payments SET {sets}, updated_at = now() WHERE id = $1 RETURNING {COLUMNS}",
                uuid.UUID(payment_id),
                *fields.values(),
            )
        return _payment(row)

    async def get(self, payment_id: str) -> dict[str, Any] | None:
        row = await self.db.fetchrow(
            f"SELECT {COLUMNS} FROM payments WHERE id = $1", uuid.UUID(payment_id), fresh=True
        )
        return None if row is None else _payment(row)
