"""User accounts in PostgreSQL: registration, credentials, profiles and password resets.

A reset token is never stored, in clear, anywhere: `password_resets` holds its SHA-256, and
the outbox event (then the Redis stream) carries only a random reset id. The token is
HMAC-SHA256(reset key, reset id), so only a holder of the reset key (the user service's own
secret file, RESET_KEY_FILE) can rebuild it from the event to mail it (`services.user.mailer`).

An e-mail address is normalised once, by `normalize_email` (through the `Email` type of every
request model), and stored, looked up and throttled in that one form: Unicode NFKC, then full
case folding. Spellings a person would call the same address (`Ann@Example.com`,
`ANN@EXAMPLE.COM`, `ann@example.com` in full-width letters) are one account, one counter.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
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
RESET_TOPIC = "user.password_reset"  # the outbox topic of a requested reset
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


@dataclass(frozen=True)
class ResetMail:
    """What a reset e-mail carries: the token rebuilt from its reset id, to the account's
    address."""

    reset_id: str
    email: str
    token: str
    expires_at: datetime


def reset_token(key: bytes, reset_id: str) -> str:
    """The token of a reset: HMAC-SHA256(key, reset id), URL-safe base64 (43 characters)."""
    digest = hmac.new(key, reset_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class Accounts:
    def __init__(self, db: Database, reset_key: bytes):
        self.db = db
        self.reset_key = reset_key

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
        """Record a single-use reset and queue the e-mail that carries its token (outbox).

        Unknown addresses do nothing, and the caller answers the same either way, so the
        endpoint does not reveal who has an account. The event names the reset by a random id
        (the mailer rebuilds the token from it); it holds neither the token nor the address."""
        reset_id = secrets.token_urlsafe(16)
        expires = datetime.now(UTC) + RESET_TTL
        async with self.db.transaction() as connection:
            user_id = await connection.fetchval("SELECT id FROM users WHERE email = $1", email)
            if user_id is None:
                return
            await connection.execute(
                "INSERT INTO password_resets (token_hash, user_id, expires_at) VALUES ($1, $2, $3)",
                _hash(reset_token(self.reset_key, reset_id)),
                user_id,
                expires,
            )
            await connection.execute(
                """INSERT INTO outbox (topic, key, payload)
                   VALUES ($1, $2, $3::jsonb)""",
                RESET_TOPIC,
                str(user_id),
                json.dumps(
                    {"reset_id": reset_id, "user_id": user_id, "expires_at": expires.isoformat()}
                ),
            )

    async def reset_to_mail(self, reset_id: str) -> ResetMail | None:
        """The e-mail a reset still needs, or None: already mailed, used, expired, or unknown
        (its account deleted, or the reset key changed since: the token can't be rebuilt)."""
        token = reset_token(self.reset_key, reset_id)
        row = await self.db.fetchrow(
            """SELECT u.email, r.expires_at FROM password_resets r JOIN users u ON u.id = r.user_id
               WHERE r.token_hash = $1 AND r.mailed_at IS NULL AND r.used_at IS NULL
                 AND r.expires_at > now()""",
            _hash(token),
            fresh=True,
        )
        if row is None:
            return None
        return ResetMail(reset_id, row["email"], token, row["expires_at"])

    async def reset_mailed(self, mail: ResetMail) -> None:
        """Remember that the e-mail went out, so a redelivered event does not send it again."""
        await self.db.execute(
            "UPDATE password_resets SET mailed_at = now() WHERE token_hash = $1",
            _hash(mail.token),
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
