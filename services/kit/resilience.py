"""Calling an outside party that fails: a circuit breaker, retries with backoff, a time budget.

    guard = Guard("warehouse", observe=lambda outcome, error: calls.labels(outcome).inc())
    shipment = await guard.call(partial(warehouse.hand_over, order, key=f"order-{id}"))

- **Transient** failures (`Transient` and its subclasses: a timeout, a refused connection, a
  5xx, a 429) are retried with exponential backoff and full jitter. The caller binds its
  idempotency key into the call, so every attempt sends the same one and a call whose answer
  was lost is never applied twice.
- Any other exception is the party's **answer** (a decline, a refusal): raised at once, and
  it counts as a success for the breaker, because the party is up and answering.
- The **breaker** opens after `consecutive_failures` transient failures in a row, or when at
  least `min_calls` of the last `window` calls hold a `failure_rate` share of failures. While
  open, calls fail at once with `BreakerOpen` (nothing sent). After `cooldown_s` it is
  half-open: exactly one trial call goes through; success closes it, failure re-opens it.
- **Bounded time**: all attempts of one call take at most `budget_s`; past it, `OutOfTime`.

The payment providers (services.payment.resilience) and the warehouse handover
(services.order.fulfilment) are both called through it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import TypeVar

from services.kit.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")


class Transient(Exception):
    """A failure worth retrying with the same idempotency key."""


class BreakerOpen(Transient):
    """The breaker refused the call: nothing was sent. `__cause__` is the last failure of
    an earlier attempt of the same call, if one was sent."""


class OutOfTime(Transient):
    """The call's time budget ran out (its last attempt may have reached the party)."""


class BreakerState(IntEnum):  # the values are the `*_breaker_state` gauges' contract
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class Outcome(StrEnum):
    """What one attempt came to, as the guard reports it to `observe`."""

    SUCCESS = "success"
    ANSWERED = "answered"  # the party refused (an exception other than Transient)
    ERROR = "error"  # a transient failure
    BREAKER_OPEN = "breaker_open"  # refused without calling


@dataclass(frozen=True)
class BreakerConfig:
    consecutive_failures: int = 5
    failure_rate: float = 0.5
    window: int = 20  # the last N calls judged for the failure rate
    min_calls: int = 10  # ... once there are at least this many
    cooldown_s: float = 30.0


class CircuitBreaker:
    """One party's breaker. Not thread-safe; one event loop is all it serves."""

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
            log.warning("breaker", party=self.name, state=state.name.lower())
        self._state = state
        if state is BreakerState.CLOSED:
            self._consecutive = 0
            self._outcomes.clear()


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per call; the waits between them grow exponentially and are drawn uniformly
    below that bound ("full jitter"), so retries from many pods spread out."""

    attempts: int = 3
    base_delay_s: float = 0.1
    max_delay_s: float = 2.0
    multiplier: float = 2.0

    def backoff(self, retry: int, rng: random.Random) -> float:
        """The wait before retry number `retry` (0 for the first retry)."""
        return rng.uniform(0, min(self.max_delay_s, self.base_delay_s * self.multiplier**retry))


DEFAULT_BREAKER, DEFAULT_RETRY = BreakerConfig(), RetryPolicy()  # frozen: shared safely

Observer = Callable[[Outcome, BaseException | None], None]


class Guard:
    """One outside party behind its breaker, with retries within a time budget."""

    def __init__(
        self,
        name: str,
        *,
        breaker: BreakerConfig = DEFAULT_BREAKER,
        retry: RetryPolicy = DEFAULT_RETRY,
        budget_s: float = 10.0,
        observe: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.breaker = CircuitBreaker(name, breaker, clock=clock)
        self.retry = retry
        self.budget_s = budget_s
        self.observe: Observer = observe or (lambda _outcome, _error: None)
        self.clock = clock
        self.rng = rng or random.Random()

    async def call(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call` with retries, within the budget, through the breaker: its result, the
        party's answer as the exception it raised, or the last `Transient` failure
        (`BreakerOpen`, `OutOfTime` when the guard itself gave up)."""
        deadline = self.clock() + self.budget_s
        last: Transient | None = None
        for attempt in range(self.retry.attempts):
            if attempt:
                delay = self.retry.backoff(attempt - 1, self.rng)
                if self.clock() + delay >= deadline:
                    break
                await asyncio.sleep(delay)
            if deadline - self.clock() <= 0:
                break
            if not self.breaker.try_acquire():
                refused = BreakerOpen(f"{self.name}: the breaker is open")
                self.observe(Outcome.BREAKER_OPEN, refused)
                raise refused from last
            try:
                async with asyncio.timeout(deadline - self.clock()):
                    result = await call()
            except TimeoutError as error:  # our budget, not the call's own timeout
                self.breaker.record_failure()
                self.observe(Outcome.ERROR, error)
                last = OutOfTime(f"{self.name}: no answer within {self.budget_s} s")
                break
            except Transient as error:
                self.breaker.record_failure()
                self.observe(Outcome.ERROR, error)
                last = error
                log.info("attempt failed", party=self.name, attempt=attempt, error=str(error))
                continue
            except Exception as error:
                self.breaker.record_success()  # the party is healthy: it answered
                self.observe(Outcome.ANSWERED, error)
                raise
            except BaseException:
                self.breaker.release()
                raise
            self.breaker.record_success()
            self.observe(Outcome.SUCCESS, None)
            return result
        raise last or OutOfTime(f"{self.name}: no time left of {self.budget_s} s")
