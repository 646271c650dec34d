"""User accounts in PostgreSQL: registration, credentials, profiles and password resets.

An e-mail address is normalised once, by `normalize_email` (through the `Email` type of every
request model), and stored, looked up and throttled in that one form: Unicode NFKC, then full
case folding. Spellings a person would call the same address (`Ann@Example.com`,
`ANN@EXAMPLE.COM`, `ann@example.com` in full-width letters) are one account, one counter.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

import asyncpg
from pydantic import AfterValidator, EmailStr

from services.kit.db import Database

RESET_TTL = timedelta(minutes=30)
PROFILE = "id, email, full_name, role, created_at, updated_at"
MAX_EMAIL_LENGTH = 254  # RFC 5321's path limit; the users table checks it too


def normalize_email(address: str) -> str:
    """The one form of an address: NFKC, case-folded, NFKC again (folding can un-compose).

    Folding the local part too is a choice: RFC 5321 lets a mail server tell `Ann` from `ann`,
    but no real one does, and two accounts that differ only in case invite takeover by
    confusion."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", address).casefold())
    if len(folded) > MAX_EMAIL_LENGTH:
        raise ValueError(f"must be at most {MAX_EMAIL_LENGTH} characters once normalised")
    return folded


Email = Annotated[EmailStr, AfterValidator(normalize_email)]


@dataclass(frozen=True)
class Credentials:
    user_id: int
    role: str
    password_hash: str


def profile(row: asyncpg.Record) -> dict[str, object]:
    return {
        **dict(row),
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


class Accounts:
    def __init__(self, db: Database):
        self.db = db

    async def register(self, email: str, password_hash: str, full_name: str) -> int | None:
        """The new account's id, or None when the address has one already (left as it was)."""
        async with self.db.transaction() as connection:
            return await connection.fetchval(
                """INSERT INTO users (email, password_hash, full_name) VALUES ($1, $2, $3)
                   ON CONFLICT (email) DO NOTHING
                   RETURNING id""",
                email,
                password_hash,
                full_name,
            )

    async def credentials(self, email: str) -> Credentials | None:
        # Fresh: a login right after registering must find the account.
        row = await self.db.fetchrow(
            "SELECT id, role, password_hash FROM users WHERE email = $1",
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
            user_id = await connection.fetchval("SELECT id FROM users WHERE email = $1", email)
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

    async def reset_is_open(self, token: str) -> bool:
        """Whether a reset token could be used now (checked again, atomically, when used)."""
        return bool(
            await self.db.fetchval(
                """SELECT EXISTS (SELECT 1 FROM password_resets
                   WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now())""",
                _hash(token),
                fresh=True,
            )
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
