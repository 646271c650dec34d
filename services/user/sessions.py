"""Sessions, refresh tokens and throttles (logins, reset requests), kept in Redis.

A session lives 24 hours (the seed's TTL) under `session:{<user>}:<sid>`, and every session of
a user is listed in `sessions:{<user>}`. The braces are a Redis Cluster hash tag: all keys of
one user share a slot, so each change to them is one atomic Lua script on the slot's node.
Logging out deletes one session; a password change or reset deletes them all, so their
refresh tokens stop working; the access tokens already issued are revoked on every service
through `services.kit.revocation`.

A refresh token is `<user>.<sid>.<secret>`; only a hash of the secret is stored; each refresh
rotates it, so a stolen and already used refresh token is worthless.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster


@dataclass(frozen=True)
class Session:
    sid: str
    user_id: int
    role: str
    refresh_hash: str
    created_at: float


def _session_key(user_id: int, sid: str) -> str:
    return f"session:{{{user_id}}}:{sid}"


def _index_key(user_id: int) -> str:
    return f"sessions:{{{user_id}}}"


# Atomic per user (the keys share a hash slot); scripts, since cluster pipelines have no MULTI.
STORE = """
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
"""
END = """
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
"""
END_ALL = """
local sids = redis.call('SMEMBERS', KEYS[1])
for _, sid in ipairs(sids) do redis.call('DEL', ARGV[1] .. sid) end
redis.call('DEL', KEYS[1])
return #sids
"""


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Sessions:
    def __init__(self, redis: RedisCluster | Redis, ttl_s: int):
        self.redis = redis
        self.ttl_s = ttl_s
        self._store_script = redis.register_script(STORE)
        self._end_script = redis.register_script(END)
        self._end_all_script = redis.register_script(END_ALL)

    async def create(self, user_id: int, role: str) -> tuple[Session, str]:
        """A new session and its refresh token (returned once, stored hashed)."""
        sid = secrets.token_urlsafe(16)
        refresh_secret = secrets.token_urlsafe(32)
        session = Session(sid, user_id, role, _hash(refresh_secret), time.time())
        await self._store(session)
        return session, f"{user_id}.{sid}.{refresh_secret}"

    async def get(self, user_id: int, sid: str) -> Session | None:
        raw = await self.redis.get(_session_key(user_id, sid))
        return None if raw is None else Session(**json.loads(raw))

    async def rotate(self, refresh_token: str) -> tuple[Session, str] | None:
        """Trade a refresh token for a new one on the same session; None if it is not valid."""
        try:
            user, sid, secret = refresh_token.split(".", 2)
            user_id = int(user)
        except ValueError:
            return None
        session = await self.get(user_id, sid)
        if session is None or not hmac.compare_digest(session.refresh_hash, _hash(secret)):
            return None
        new_secret = secrets.token_urlsafe(32)
        rotated = Session(sid, user_id, session.role, _hash(new_secret), session.created_at)
        await self._store(rotated)
        return rotated, f"{user_id}.{sid}.{new_secret}"

    async def end(self, user_id: int, sid: str) -> None:
        await self._end_script(keys=[_session_key(user_id, sid), _index_key(user_id)], args=[sid])

    async def end_all(self, user_id: int) -> int:
        """End every session of a user (password change or reset); returns how many."""
        prefix = _session_key(user_id, "")
        return int(await self._end_all_script(keys=[_index_key(user_id)], args=[prefix]))

    async def _store(self, session: Session) -> None:
        await self._store_script(
            keys=[_session_key(session.user_id, session.sid), _index_key(session.user_id)],
            args=[session.sid, json.dumps(session.__dict__), self.ttl_s],
        )


@dataclass(frozen=True)
class Limit:
    attempts: int
    window_s: int


class Throttle:
    """Attempts at `action` (failed logins, reset requests) counted per account and per
    client address, each over a fixed window started by its first attempt.

    `email` is the normalised address (`services.user.accounts.Email`): every spelling of an
    address shares one counter. `address` is the one the gateway saw, never one a client
    claims."""

    def __init__(
        self, redis: RedisCluster | Redis, action: str, per_account: Limit, per_address: Limit
    ):
        self.redis = redis
        self.action = action
        self.per_account = per_account
        self.per_address = per_address

    def _keys(self, email: str, address: str) -> list[tuple[str, Limit]]:
        account = hashlib.sha256(email.encode()).hexdigest()[:32]
        return [
            (f"throttle:{self.action}:account:{account}", self.per_account),
            (f"throttle:{self.action}:address:{address}", self.per_address),
        ]

    async def retry_after(self, email: str, address: str) -> int:
        """Seconds until the action may be tried again; 0 when it may be tried now."""
        wait = 0
        for key, limit in self._keys(email, address):
            count = await self.redis.get(key)
            if count is not None and int(count) >= limit.attempts:
                wait = max(wait, max(1, await self.redis.ttl(key)))
        return wait

    async def count(self, email: str, address: str) -> None:
        for key, limit in self._keys(email, address):
            count = await self.redis.incr(key)
            if count == 1:
                await self.redis.expire(key, limit.window_s)

    async def clear_account(self, email: str) -> None:
        """A correct password clears the account's counter (not the address's)."""
        key, _ = self._keys(email, "")[0]
        await self.redis.delete(key)
