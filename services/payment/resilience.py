"""Calling payment providers that fail: a breaker per provider, retries, failover.

    router = PaymentRouter([stripe, paypal], metrics=PaymentMetrics(metrics.registry))
    auth = await router.authorize(2599, "USD", token, idempotency_key=f"{order_id}:authorize")
    # persist auth.provider and auth.reference with the order, then later:
    capture = await router.capture(auth.provider, auth.reference, f"{order_id}:capture")
    await router.refund(capture.provider, capture.reference, 2599, "USD", f"{order_id}:refund:1")

Each provider is called through its own `services.kit.resilience.Guard` (the breaker, the
retries with backoff and full jitter, the time budget; the warehouse handover uses the same):

- **Retries**: a transient error (`providers.TransientError`: timeout, connection, 5xx, 429)
  is retried on the same provider, *always with the caller's idempotency key*, so a call
  whose answer was lost is never applied twice. A permanent error (a decline, an invalid
  request) is raised at once, and counts as a success for the breaker.
- **Failover** (authorizations only): when the primary's breaker is open or the primary fails
  transiently through its retries, the next provider is tried. Captures, voids and refunds go
  to the provider holding the money, or fail with a `TransientError` for the caller (the
  order saga) to retry later with the same key.
- **Bounded time**: every provider gets at most `budget_s` for all its attempts of one
  operation (each HTTP call also has the adapter's own timeout), so an authorization takes
  at most `budget_s` times the number of providers, plus nothing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.kit import resilience
from services.kit.exports import PAYMENT_ATTEMPTS, PAYMENT_BREAKER_STATE
from services.kit.logs import get_logger
from services.kit.resilience import (
    DEFAULT_BREAKER,
    DEFAULT_RETRY,
    BreakerConfig,
    CircuitBreaker,
    Guard,
    Outcome,
    RetryPolicy,
)
from services.payment.providers import (
    Authorization,
    Capture,
    Declined,
    PaymentError,
    Provider,
    Refund,
    TransientError,
    Void,
)

log = get_logger(__name__)
T = TypeVar("T")

# result label values of PAYMENT_ATTEMPTS: each HTTP-level attempt, or a call the breaker refused
RESULTS = ("success", "declined", "rejected", "error", "breaker_open")


class PaymentMetrics:
    """`payment_attempts_total{provider,result}` and `payment_breaker_state{provider}`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.attempts = Counter(
            PAYMENT_ATTEMPTS,
            "Calls to payment providers by result: success, declined, rejected (other permanent "
            "errors), error (transient), breaker_open (refused without calling)",
            ["provider", "result"],
            registry=self.registry,
        )
        self.breaker_state = Gauge(
            PAYMENT_BREAKER_STATE,
            "Each payment provider's circuit breaker: 0 closed, 1 half-open, 2 open",
            ["provider"],
            registry=self.registry,
        )

    def watch(self, breaker: CircuitBreaker) -> None:
        # Read at scrape time, so an open breaker whose cool-down passed shows half-open.
        self.breaker_state.labels(breaker.name).set_function(lambda: float(breaker.state))
        for result in RESULTS:  # every series exists from the start, at 0: rates read them
            self.attempts.labels(breaker.name, result)


class BreakerOpen(TransientError):
    """The provider's breaker refused the call: nothing was sent."""


class ProvidersUnavailable(TransientError):
    """Every provider failed transiently or was refused by its breaker. Nothing was
    authorized as far as we know; the caller may retry later with the same key."""

    def __init__(self, errors: Sequence[PaymentError]) -> None:
        self.errors = list(errors)
        summary = "; ".join(str(error) for error in self.errors) or "no providers"
        super().__init__("all", "providers_unavailable", summary)


class PaymentRouter:
    """Providers in order of preference, each behind its breaker and retry policy."""

    def __init__(
        self,
        providers: Sequence[Provider],
        *,
        breaker: BreakerConfig = DEFAULT_BREAKER,
        retry: RetryPolicy = DEFAULT_RETRY,
        budget_s: float = 10.0,
        metrics: PaymentMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not providers:
            raise ValueError("at least one provider")
        names = [provider.name for provider in providers]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be unique: {names}")
        self.providers = {provider.name: provider for provider in providers}
        self.metrics = metrics or PaymentMetrics()
        self.guards = {
            name: Guard(
                name,
                breaker=breaker,
                retry=retry,
                budget_s=budget_s,
                observe=partial(self._count, name),
                clock=clock,
                rng=rng,
            )
            for name in names
        }
        for guard in self.guards.values():
            self.metrics.watch(guard.breaker)

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        """Each provider's breaker, by name (its guard's)."""
        return {name: guard.breaker for name, guard in self.guards.items()}

    async def close(self) -> None:
        await asyncio.gather(*(provider.close() for provider in self.providers.values()))

    async def authorize(
        self,
        amount_cents: int,
        currency: str,
        token: str,
        idempotency_key: str,
        *,
        left_behind: Callable[[str], Awaitable[None]] | None = None,
    ) -> Authorization:
        """Authorize on the first provider that can; `Declined`/`PermanentError` at once,
        `ProvidersUnavailable` when none could answer.

        `left_behind(provider)` is awaited before moving on from a provider that was sent the
        request and failed transiently: it may have authorized all the same (a lost answer),
        so the caller records it for `authorize_at` + `void` later (services.payment.strays).
        """
        if amount_cents <= 0:
            raise ValueError("amount_cents must be positive")
        errors: list[PaymentError] = []
        for name in self.providers:
            try:
                return await self.authorize_at(name, amount_cents, currency, token, idempotency_key)
            except TransientError as error:
                errors.append(error)
                log.warning("payment provider failed, next one", provider=name, code=error.code)
                sent = not isinstance(error, BreakerOpen) or error.__cause__ is not None
                if sent and left_behind is not None:
                    await left_behind(name)
        raise ProvidersUnavailable(errors)

    async def authorize_at(
        self, provider: str, amount_cents: int, currency: str, token: str, idempotency_key: str
    ) -> Authorization:
        """Authorize on one provider, through its breaker and retries."""
        call = partial(
            self.providers[provider].authorize, amount_cents, currency, token, idempotency_key
        )
        return await self._call(provider, call)

    async def capture(self, provider: str, authorization: str, idempotency_key: str) -> Capture:
        return await self._call(
            provider, partial(self.providers[provider].capture, authorization, idempotency_key)
        )

    async def void(self, provider: str, authorization: str, idempotency_key: str) -> Void:
        return await self._call(
            provider, partial(self.providers[provider].void, authorization, idempotency_key)
        )

    async def refund(
        self, provider: str, capture: str, amount_cents: int, currency: str, idempotency_key: str
    ) -> Refund:
        if amount_cents <= 0:
            raise ValueError("amount_cents must be positive")
        call = partial(
            self.providers[provider].refund, capture, amount_cents, currency, idempotency_key
        )
        return await self._call(provider, call)

    async def _call(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call` on provider `name` through its guard (breaker, retries, budget). The
        idempotency key is bound into `call`: every attempt sends the same one."""
        try:
            return await self.guards[name].call(call)
        except resilience.BreakerOpen as refused:
            raise BreakerOpen(
                name, "breaker_open", "the provider's breaker is open"
            ) from refused.__cause__
        except resilience.OutOfTime as error:
            raise TransientError(name, "timeout", str(error)) from None

    def _count(self, provider: str, outcome: Outcome, error: BaseException | None) -> None:
        result = outcome.value
        if outcome is Outcome.ANSWERED:
            result = "declined" if isinstance(error, Declined) else "rejected"
        self.metrics.attempts.labels(provider, result).inc()
