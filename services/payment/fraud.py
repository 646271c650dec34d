"""Fraud rules checked before any provider is called, each refusal with a reason people read.

    rules = FraudRules(max_amount_cents={"USD": 500_000}, velocity_limit=5, velocity_window_s=3600)
    decision = await rules.check(user_id="42", amount_cents=2599, currency="USD")
    if not decision.allowed:
        ...  # decision.rule: "amount_limit" | "velocity"; decision.reason: the sentence

Velocity counts the payments a user was allowed to make in the last `velocity_window_s`
seconds, in a `VelocityStore`: in memory by default (per process, so per pod), or any store
that can count and add atomically (a Redis sorted set behind a Lua script, for all pods).
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from services.payment.money import format_amount


@dataclass(frozen=True)
class FraudDecision:
    allowed: bool
    rule: str | None = None  # the rule that refused: "amount_limit", "velocity"
    reason: str | None = None


ALLOW = FraudDecision(True)


class VelocityStore(Protocol):
    async def add_if_below(self, key: str, limit: int, window_s: float, now: float) -> int:
        """Count the entries of `key` in (now - window_s, now]; if fewer than `limit`, add one
        at `now`. Returns the count found *before* adding (>= limit: nothing was added).
        Must be atomic per key."""
        ...


class MemoryVelocityStore:
    """Per process. Atomic because nothing in it awaits."""

    def __init__(self) -> None:
        self._hits: defaultdict[str, deque[float]] = defaultdict(deque)

    async def add_if_below(self, key: str, limit: int, window_s: float, now: float) -> int:
        hits = self._hits[key]
        while hits and hits[0] <= now - window_s:
            hits.popleft()
        count = len(hits)
        if count < limit:
            hits.append(now)
        return count


class FraudRules:
    def __init__(
        self,
        *,
        max_amount_cents: Mapping[str, int] | int = 1_000_000,
        velocity_limit: int = 5,
        velocity_window_s: float = 3600.0,
        store: VelocityStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`max_amount_cents`: one limit for every currency, or a limit per currency (a
        currency without one is refused: the limit is the rule, not a suggestion)."""
        if velocity_limit < 1 or velocity_window_s <= 0:
            raise ValueError("velocity_limit >= 1 and velocity_window_s > 0")
        self.max_amount_cents = max_amount_cents
        self.velocity_limit = velocity_limit
        self.velocity_window_s = velocity_window_s
        self.store = store or MemoryVelocityStore()
        self.clock = clock

    def _limit(self, currency: str) -> int | None:
        if isinstance(self.max_amount_cents, int):
            return self.max_amount_cents
        return self.max_amount_cents.get(currency.upper())

    async def check(self, user_id: str, amount_cents: int, currency: str) -> FraudDecision:
        """Whether `user_id` may pay `amount_cents` now. An allowed payment counts toward the
        user's velocity; a refused one does not."""
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
        found = await self.store.add_if_below(
            f"velocity:{user_id}", self.velocity_limit, self.velocity_window_s, self.clock()
        )
        if found >= self.velocity_limit:
            return FraudDecision(
                False,
                "velocity",
                f"user {user_id} made {found} payments in the last "
                f"{self.velocity_window_s:g} s; the limit is {self.velocity_limit}",
            )
        return ALLOW
