"""Calling payment providers that fail: a breaker per provider, retries, failover.

    router = PaymentRouter([stripe, paypal], metrics=PaymentMetrics(metrics.registry))
    auth = await router.authorize(2599, "USD", token, idempotency_key=f"{order_id}:authorize")
    # persist auth.provider and auth.reference with the order, then later:
    capture = await router.capture(auth.provider, auth.reference, f"{order_id}:capture")
    await router.refund(capture.provider, capture.reference, 2599, "USD", f"{order_id}:refund:1")

- **Retries**: a transient error (`providers.TransientError`: timeout, connection, 5xx, 429)
  is retried on the same provider with exponential backoff and full jitter, *always with the
  caller's idempotency key*, so a call whose answer was lost is never applied twice. A
  permanent error (a decline, an invalid request) is raised at once.
- **Breaker** per provider: it opens after `consecutive_failures` transient failures in a
  row, or when at least `min_calls` of the last `window` calls include a `failure_rate`
  share of failures. While open, calls to the provider fail at once. After `cooldown_s` it
  is half-open: exactly one trial call goes through; success closes it, failure re-opens it.
  Declines count as successes: the provider answered.
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
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import partial
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.kit.logs import get_logger
from services.payment.providers import (
    Authorization,
    Capture,
    Declined,
    PaymentError,
    PermanentError,
    Provider,
    Refund,
    TransientError,
    Void,
)
from stacks import alerts

log = get_logger(__name__)
T = TypeVar("T")

# The names are the alerts' contract (stacks/alerts.py).
PAYMENT_ATTEMPTS = alerts.PAYMENT_ATTEMPTS  # labels: provider, result
PAYMENT_BREAKER_STATE = (
    alerts.PAYMENT_BREAKER_STATE
)  # labels: provider; 0 closed, 1 half-open, 2 open
# result label values of PAYMENT_ATTEMPTS: each HTTP-level attempt, or a call the breaker refused
RESULTS = ("success", "declined", "rejected", "error", "breaker_open")


class BreakerState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True)
class BreakerConfig:
    consecutive_failures: int = 5
    failure_rate: float = 0.5
    window: int = 20  # the last N calls judged for the failure rate
    min_calls: int = 10  # ... once there are at least this many
    cooldown_s: float = 30.0


class CircuitBreaker:
    """One provider's breaker. Not thread-safe; one event loop is all it serves."""

    def __init__(
        self,
        name: str,
        config: BreakerConfig = BreakerConfig(),  # frozen: shared safely
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self.clock = clock
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._consecutive = 0
        self._outcomes: deque[bool] = deque(maxlen=config.window)  # True: failure
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        if (
            self._state is BreakerState.OPEN
            and self.clock() - self._opened_at >= self.config.cooldown_s
        ):
            self._move(BreakerState.HALF_OPEN)
        return self._state

    def try_acquire(self) -> bool:
        """Whether a call may go now. In half-open, only one trial at a time may: its outcome
        must be recorded (`record_success`/`record_failure`) or the permit `release`d."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self._trial_in_flight = False
        if self._state is BreakerState.HALF_OPEN:
            self._move(BreakerState.CLOSED)
            return
        self._consecutive = 0
        self._outcomes.append(False)

    def record_failure(self) -> None:
        self._trial_in_flight = False
        if self._state is BreakerState.HALF_OPEN:
            self._open()
            return
        if self._state is BreakerState.OPEN:
            return  # a call that started before the breaker opened
        self._consecutive += 1
        self._outcomes.append(True)
        failures = sum(self._outcomes)
        over_rate = (
            len(self._outcomes) >= self.config.min_calls
            and failures / len(self._outcomes) >= self.config.failure_rate
        )
        if self._consecutive >= self.config.consecutive_failures or over_rate:
            self._open()

    def release(self) -> None:
        """A call ended without a verdict (cancelled): let another trial through."""
        self._trial_in_flight = False

    def _open(self) -> None:
        self._opened_at = self.clock()
        self._move(BreakerState.OPEN)

    def _move(self, state: BreakerState) -> None:
        if state is not self._state:
            log.warning("payment breaker", provider=self.name, state=state.name.lower())
        self._state = state
        if state is BreakerState.CLOSED:
            self._consecutive = 0
            self._outcomes.clear()


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per provider and operation; the waits between them grow exponentially and are
    drawn uniformly below that bound ("full jitter"), so retries from many pods spread out."""

    attempts: int = 3
    base_delay_s: float = 0.1
    max_delay_s: float = 2.0
    multiplier: float = 2.0

    def backoff(self, retry: int, rng: random.Random) -> float:
        """The wait before retry number `retry` (0 for the first retry)."""
        return rng.uniform(0, min(self.max_delay_s, self.base_delay_s * self.multiplier**retry))


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
        breaker: BreakerConfig = BreakerConfig(),  # frozen
        retry: RetryPolicy = RetryPolicy(),  # frozen
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
        self.breakers = {name: CircuitBreaker(name, breaker, clock=clock) for name in names}
        self.retry = retry
        self.budget_s = budget_s
        self.metrics = metrics or PaymentMetrics()
        self.clock = clock
        self.rng = rng or random.Random()
        for circuit in self.breakers.values():
            self.metrics.watch(circuit)

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
        """`call` on provider `name` with retries, within the budget, through its breaker.
        The idempotency key is bound into `call`: every attempt sends the same one."""
        breaker = self.breakers[name]
        deadline = self.clock() + self.budget_s
        last: TransientError | None = None
        for attempt in range(self.retry.attempts):
            if attempt:
                delay = self.retry.backoff(attempt - 1, self.rng)
                if self.clock() + delay >= deadline:
                    break
                await asyncio.sleep(delay)
            if deadline - self.clock() <= 0:
                break
            if not breaker.try_acquire():
                self._count(name, "breaker_open")
                raise BreakerOpen(name, "breaker_open", "the provider's breaker is open") from last
            try:
                async with asyncio.timeout(deadline - self.clock()):
                    result = await call()
            except TimeoutError:  # our budget, not the adapter's per-call timeout
                breaker.record_failure()
                self._count(name, "error")
                last = TransientError(name, "timeout", f"no answer within {self.budget_s} s")
                break
            except TransientError as error:
                breaker.record_failure()
                self._count(name, "error")
                last = error
                log.info("payment attempt failed", provider=name, attempt=attempt, code=error.code)
                continue
            except PermanentError as error:
                breaker.record_success()  # the provider is healthy: it answered
                self._count(name, "declined" if isinstance(error, Declined) else "rejected")
                raise
            except BaseException:
                breaker.release()
                raise
            breaker.record_success()
            self._count(name, "success")
            return result
        raise last or TransientError(name, "timeout", f"no time left of {self.budget_s} s")

    def _count(self, provider: str, result: str) -> None:
        self.metrics.attempts.labels(provider, result).inc()
