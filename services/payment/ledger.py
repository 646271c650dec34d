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
        row = await self.db.write_fetchrow(
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
            # The conflict waited for a concurrent twin to commit: its row is there to read.
            row = await self.db.fetchrow(
                f"SELECT {COLUMNS} FROM payments WHERE idempotency_key = $1", key, fresh=True
            )
        same = (row["order_id"], row["amount_cents"], row["currency"]) == (
            order_id,
            amount_cents,
            currency,
        )
        return _payment(row), same

    async def update(self, payment_id: str, **fields: Any) -> dict[str, Any]:
        sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(fields, start=2))
        row = await self.db.write_fetchrow(
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

    # --- strays: authorizations a provider may hold although we moved on ----------------------

    async def note_stray(
        self, payment_id: str, provider: str, key: str, amount_cents: int, currency: str, token: str
    ) -> None:
        await self.db.execute(
            """INSERT INTO payment_strays
                   (payment_id, provider, idempotency_key, amount_cents, currency, token)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (payment_id, provider) DO NOTHING""",
            uuid.UUID(payment_id),
            provider,
            key,
            amount_cents,
            currency,
            token,
        )

    async def settled_strays(
        self, pending_grace_s: float, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Open strays whose payment has settled (or stayed pending past the grace period,
        when its charge was given up): only then is a hold at the stray provider surplus."""
        rows = await self.db.fetch(
            """SELECT s.payment_id, s.provider, s.idempotency_key, s.amount_cents, s.currency,
                      s.token, p.provider AS paid_with, p.status
                 FROM payment_strays s JOIN payments p ON p.id = s.payment_id
                WHERE s.resolved_at IS NULL
                  AND (p.status <> 'pending'
                       OR p.updated_at < now() - make_interval(secs => $1))
                ORDER BY s.created_at LIMIT $2""",
            pending_grace_s,
            limit,
            fresh=True,
        )
        return [{**dict(r), "payment_id": str(r["payment_id"])} for r in rows]

    async def resolve_stray(self, payment_id: str, provider: str, outcome: str) -> None:
        await self.db.execute(
            """UPDATE payment_strays SET resolved_at = now(), outcome = $3
                WHERE payment_id = $1 AND provider = $2 AND resolved_at IS NULL""",
            uuid.UUID(payment_id),
            provider,
            outcome,
        )
