"""User accounts in PostgreSQL: registration, credentials, profiles and password resets."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from services.kit.db import Database

RESET_TTL = timedelta(minutes=30)
PROFILE = "id, email, full_name, role, created_at, updated_at"


@dataclass(frozen=True)
class Credentials:
    user_id: int
    role: str
    password_hash: str


class EmailTaken(Exception):
    pass


def profile(row: asyncpg.Record) -> dict[str, object]:
    return {
        **dict(row),
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


class Accounts:
    def __init__(self, db: Database):
        self.db = db

    async def register(self, email: str, password_hash: str, full_name: str) -> dict[str, object]:
        try:
            async with self.db.transaction() as connection:
                row = await connection.fetchrow(
                    f"""INSERT INTO users (email, password_hash, full_name) VALUES ($1, $2, $3)
                        RETURNING {PROFILE}""",
                    email,
                    password_hash,
                    full_name,
                )
        except asyncpg.UniqueViolationError as error:
            raise EmailTaken(email) from error
        return profile(row)

    async def credentials(self, email: str) -> Credentials | None:
        # Fresh: a login right after registering must find the account.
        row = await self.db.fetchrow(
            "SELECT id, role, password_hash FROM users WHERE lower(email) = lower($1)",
            email,
            fresh=True,
        )
        return None if row is None else Credentials(row["id"], row["role"], row["password_hash"])

    async def password_hash(self, user_id: int) -> str | None:
        return await self.db.fetchval(
            "SELECT password_hash FROM users WHERE id = $1", user_id, fresh=True
        )

    async def profile(self, user_id: int) -> dict[str, object] | None:
        row = await self.db.fetchrow(
            f"SELECT {PROFILE} FROM users WHERE id = $1", user_id, fresh=True
        )
        return None if row is None else profile(row)

    async def update_profile(self, user_id: int, full_name: str) -> dict[str, object] | None:
        async with self.db.transaction() as connection:
            row = await connection.fetchrow(
                f"""UPDATE users SET full_name = $2, updated_at = now() WHERE id = $1
                    RETURNING {PROFILE}""",
                user_id,
                full_name,
            )
        return None if row is None else profile(row)

    async def set_password(self, user_id: int, password_hash: str) -> None:
        await self.db.execute(
            """UPDATE users SET password_hash = $2, password_changed_at = now(), updated_at = now()
               WHERE id = $1""",
            user_id,
            password_hash,
        )

    async def start_reset(self, email: str) -> None:
        """Record a single-use reset token and queue the e-mail that carries it (outbox).

        Unknown addresses do nothing, and the caller answers the same either way, so the
        endpoint does not reveal who has an account."""
        token = secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + RESET_TTL
        async with self.db.transaction() as connection:
            user_id = await connection.fetchval(
                "SELECT id FROM users WHERE lower(email) = lower($1)", email
            )
            if user_id is None:
                return
            await connection.execute(
                "INSERT INTO password_resets (token_hash, user_id, expires_at) VALUES ($1, $2, $3)",
                _hash(token),
                user_id,
                expires,
            )
            await connection.execute(
                """INSERT INTO outbox (topic, key, payload)
                   VALUES ('user.password_reset', $1, $2::jsonb)""",
                str(user_id),
                json.dumps(
                    {
                        "user_id": user_id,
                        "email": email,
                        "token": token,
                        "expires_at": expires.isoformat(),
                    }
                ),
            )

    async def finish_reset(self, token: str, password_hash: str) -> int | None:
        """Use a reset token once: set the new password; the user's id, or None if the token
        is unknown, used or expired."""
        async with self.db.transaction() as connection:
            user_id = await connection.fetchval(
                """UPDATE password_resets SET used_at = now()
                   WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
                   RETURNING user_id""",
                _hash(token),
            )
            if user_id is None:
                return None
            await connection.execute(
                """UPDATE users
                   SET password_hash = $2, password_changed_at = now(), updated_at = now()
                   WHERE id = $1""",
                user_id,
                password_hash,
            )
        return user_id


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
