"""Fraud rules checked before any provider is called, each refusal with a reason people read.

    rules = FraudRules(RedisVelocityStore(redis.client), max_amount_cents={"USD": 500_000},
                       velocity_limit=5, velocity_window_s=3600)
    decision = await rules.check("42", payment_id, amount_cents=2599, currency="USD")
    if not decision.allowed:
        ...  # decision.rule: "amount_limit" | "velocity"; decision.reason: the sentence

Velocity counts the payments a user was allowed to make in the last `velocity_window_s`
seconds, over every replica of the service: a sliding window in the Redis cluster, one sorted
set per user (`fraud:velocity:{<user>}`, member the payment id, score its time), trimmed,
counted and added to by one Lua script, so two replicas can never both take the last place.
The key expires one window after its latest payment. A payment already in the window (a
charge resumed after a 503) is allowed again without counting twice.

When Redis cannot answer (within VELOCITY_TIMEOUT_S) the rule cannot be checked, and the
default is to fail closed: `VelocityUnavailable`, which the service answers with 503; the
charge stays pending and the saga retries it with the same key, so it is delayed, never lost
or refused. Checkouts need Redis anyway (the saga's events, the token revocation check), so
failing open would buy little and would let card testing through during the outage.
`unchecked_max_cents` opens it for small amounts: a payment up to it is allowed unchecked.
Either way the outcome is logged and counted in `payment_fraud_velocity_unavailable_total`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from services.kit.exports import PAYMENT_VELOCITY_UNAVAILABLE
from services.kit.logs import get_logger
from services.payment.money import format_amount

log = get_logger(__name__)

VELOCITY_TIMEOUT_S = 1.0  # the longest a charge waits for the velocity window

# KEYS[1]: a user's window. ARGV: now (ms), window (ms), limit, payment id.
# Returns {payments in the window before this one, 1 if this one is allowed}.
_ADD_IF_BELOW = """
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then
  return {count - 1, 1}
end
if count >= limit then
  return {count, 0}
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
return {count, 1}
"""


# What a payment whose velocity could not be checked came to: let through (at most
# VELOCITY_UNCHECKED_MAX_CENTS), or deferred (503: the saga retries it).
VELOCITY_OUTCOMES = ("allowed_unchecked", "deferred")


@dataclass(frozen=True)
class FraudDecision:
    allowed: bool
    rule: str | None = None  # the rule that refused: "amount_limit", "velocity"
    reason: str | None = None


ALLOW = FraudDecision(True)


class VelocityUnavailable(Exception):
    """The velocity window could not be read: the payment may be neither allowed nor refused."""


class RedisVelocityStore:
    """The users' velocity windows in Redis, shared by every replica."""

    def __init__(self, redis: RedisCluster | Redis, timeout_s: float = VELOCITY_TIMEOUT_S):
        self.timeout_s = timeout_s
        self._add_if_below = redis.register_script(_ADD_IF_BELOW)

    @staticmethod
    def key(user_id: str) -> str:
        # The braces are a hash tag: the key's slot is the user's, as with `revoked:{...}`.
        return f"fraud:velocity:{{{user_id}}}"

    async def add_if_below(
        self, user_id: str, payment_id: str, limit: int, window_s: float, now: float
    ) -> tuple[int, bool]:
        """Count `user_id`'s payments in (now - window_s, now] and add `payment_id` at `now`
        if fewer than `limit` (or if it is there already). Returns (the count of the others,
        whether `payment_id` is in the window now). Atomic: one script on the key's node."""
        try:
            async with asyncio.timeout(self.timeout_s):
                count, allowed = await self._add_if_below(
                    keys=[self.key(user_id)],
                    args=[round(now * 1000), round(window_s * 1000), limit, payment_id],
                )
        except TimeoutError:
            raise VelocityUnavailable(
                f"no answer from Redis for the velocity window within {self.timeout_s} s"
            ) from None
        except (RedisError, RedisClusterException, OSError) as error:
            raise VelocityUnavailable(
                f"Redis failed on the velocity window: {type(error).__name__}"
            ) from error
        return int(count), bool(allowed)


class FraudRules:
    def __init__(
        self,
        store: RedisVelocityStore,
        *,
        max_amount_cents: Mapping[str, int] | int = 1_000_000,
        velocity_limit: int = 5,
        velocity_window_s: float = 3600.0,
        unchecked_max_cents: int = 0,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`max_amount_cents`: one limit for every currency, or a limit per currency (a
        currency without one is refused: the limit is the rule, not a suggestion).
        `unchecked_max_cents`: the largest payment allowed when the velocity window cannot be
        read (0: none; larger ones raise VelocityUnavailable)."""
        if velocity_limit < 1 or velocity_window_s <= 0 or unchecked_max_cents < 0:
            raise ValueError(
                "velocity_limit >= 1, velocity_window_s > 0 and unchecked_max_cents >= 0"
            )
        self.max_amount_cents = max_amount_cents
        self.velocity_limit = velocity_limit
        self.velocity_window_s = velocity_window_s
        self.unchecked_max_cents = unchecked_max_cents
        self.store = store
        # The pods' clocks (NTP-synced: milliseconds apart, against a window of an hour).
        self.clock = clock
        self.unavailable = Counter(
            PAYMENT_VELOCITY_UNAVAILABLE,
            "Payments whose velocity could not be checked (Redis down), by what was done",
            ["outcome"],
            registry=registry,
        )
        for outcome in VELOCITY_OUTCOMES:  # every series exists from the start, at 0
            self.unavailable.labels(outcome)

    def _limit(self, currency: str) -> int | None:
        if isinstance(self.max_amount_cents, int):
            return self.max_amount_cents
        return self.max_amount_cents.get(currency.upper())

    async def check(
        self, user_id: str, payment_id: str, amount_cents: int, currency: str
    ) -> FraudDecision:
        """Whether `user_id` may make payment `payment_id` of `amount_cents` now. An allowed
        payment counts toward the user's velocity (once, however often it is checked); a
        refused one does not. VelocityUnavailable when Redis cannot say and the amount is
        over `unchecked_max_cents`."""
        currency = currency.upper()
        limit = self._limit(currency)
        if limit is None:
            return FraudDecision(False, "amount_limit", f"payments in {currency} are not accepted")
        if amount_cents > limit:
            return FraudDecision(
                False,
                "amount_limit",
                f"amount {format_amount(amount_cents, currency)} {currency} exceeds the limit "
                f"of {format_amount(limit, currency)} {currency} per payment",
            )
        try:
            found, allowed = await self.store.add_if_below(
                user_id, payment_id, self.velocity_limit, self.velocity_window_s, self.clock()
            )
        except VelocityUnavailable as error:
            unchecked = amount_cents <= self.unchecked_max_cents
            outcome = VELOCITY_OUTCOMES[0] if unchecked else VELOCITY_OUTCOMES[1]
            self.unavailable.labels(outcome).inc()
            log.warning(
                "fraud velocity not checked", outcome=outcome, user=user_id, error=str(error)
            )
            if unchecked:
                return ALLOW
            raise
        if not allowed:
            return FraudDecision(
                False,
                "velocity",
                f"user {user_id} made {found} payments in the last "
                f"{self.velocity_window_s:g} s; the limit is {self.velocity_limit}",
            )
        return ALLOW
