"""Revoked sessions, shared by every service through Redis, checked on every authenticated route.

A JWT is valid until it expires, so a logout or a password change has to be written where
every service looks before it accepts a token. `revoked:{<subject>}` is a Redis hash per token
subject (a user id, or a service's name) holding:

- `sid:<session id>`: that session was ended (logout): its tokens are void;
- `before`: a Unix time; every token of the subject issued before it is void (a password
  change or reset, an admin ending every session of a user).

The braces are a Redis Cluster hash tag, so a subject's hash is one key on one node: each
check is one HMGET. The hash outlives every access token it can void (MAX_ACCESS_TTL plus a
minute of clock skew), then expires by itself, so the list never grows without bound.

Each process remembers a verdict for at most VERDICT_TTL_S: a revocation holds on every route
of every service within that time, and at once in the process that wrote it. When Redis
cannot answer, authenticated requests are refused with 503 (fail closed): a token is never
accepted unchecked.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from cachetools import TTLCache
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from services.kit.errors import ServiceUnavailable, Unauthorized
from services.kit.logs import get_logger

log = get_logger(__name__)

MAX_ACCESS_TTL = timedelta(minutes=60)  # no access token lives longer (kit.auth.Tokens)
KEEP_S = int(MAX_ACCESS_TTL.total_seconds()) + 60
VERDICT_TTL_S = 2.0
VERDICTS = 50_000  # (subject, session) verdicts remembered per process: a few MB at most

# One key: atomic on its node, and the expiry is never left unset.
_REVOKE = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
"""


def _key(subject: str) -> str:
    return f"revoked:{{{subject}}}"


class Revocations:
    """Writes and checks revocations. Not a readiness dependency: without Redis, public routes
    still serve and authenticated ones answer 503 until it is back."""

    def __init__(
        self,
        redis: RedisCluster | Redis,
        *,
        verdict_ttl_s: float = VERDICT_TTL_S,
        owns_client: bool = False,
    ) -> None:
        self.redis = redis
        self._owns_client = owns_client
        self._revoke = redis.register_script(_REVOKE)
        # (subject, session id) -> (session revoked, revoked before)
        self._verdicts: TTLCache[tuple[str, str], tuple[bool, float]] = TTLCache(
            VERDICTS, verdict_ttl_s
        )

    async def refuse_if_revoked(self, subject: str, session_id: str, issued_at: float) -> None:
        """Unauthorized if the token so described was revoked; ServiceUnavailable if Redis
        cannot say."""
        remembered = (subject, session_id)
        verdict = self._verdicts.get(remembered)
        if verdict is None:
            try:
                ended, before = await self.redis.hmget(_key(subject), f"sid:{session_id}", "before")
            except (RedisError, OSError) as error:
                raise ServiceUnavailable(
                    "cannot check whether the token was revoked; try again", retry_after_s=1
                ) from error
            verdict = (ended is not None, float(before) if before is not None else 0.0)
            self._verdicts[remembered] = verdict
        ended, before = verdict
        if ended:
            raise Unauthorized("session ended: log in again")
        if issued_at < before:
            raise Unauthorized("token revoked: log in again")

    async def end_session(self, subject: str, session_id: str) -> None:
        """Void every token of one session (logout)."""
        await self._revoke(keys=[_key(subject)], args=[f"sid:{session_id}", 1, KEEP_S])
        self._verdicts.pop((subject, session_id), None)

    async def end_all(self, subject: str) -> None:
        """Void every token of `subject` issued until now."""
        await self._revoke(keys=[_key(subject)], args=["before", repr(time.time()), KEEP_S])
        for remembered in [key for key in self._verdicts if key[0] == subject]:
            self._verdicts.pop(remembered, None)

    async def warm_up(self, timeout_s: float = 5.0) -> None:
        """Connect before the first request needs it (`create_app` calls this at start): a
        cluster client first learns the slots and opens connections, which can take longer
        than a check's short timeout on a busy machine, and then the first authenticated
        request would answer 503. Best effort: without Redis the service starts anyway."""
        if not self._owns_client:
            return  # the service's own client, started with its dependencies
        try:
            await asyncio.wait_for(self.redis.ping(), timeout_s)
        except (RedisError, OSError, TimeoutError) as error:
            log.warning("revocations: Redis not reachable at start", error=str(error))

    async def close(self) -> None:
        """Close the Redis client, if it is the revocations' own (`create_app` calls this)."""
        if self._owns_client:
            await self.redis.aclose()
