"""The payment provider layer against the shipped provider simulators, run in-process on
ephemeral ports: adapters, PayPal's OAuth2 access tokens, retries with one idempotency key,
breakers, failover, refunds. No database; nothing of our own is mocked."""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from services.kit.resilience import BreakerConfig, BreakerState, RetryPolicy
from services.payment.money import contains_pan, format_amount, parse_amount
from services.payment.providers import (
    Declined,
    PayPalProvider,
    PermanentError,
    StripeProvider,
    TransientError,
)
from services.payment.resilience import (
    BreakerOpen,
    PaymentMetrics,
    PaymentRouter,
    ProvidersUnavailable,
)
from services.payment.simulators import DEFAULT_CREDENTIALS, Simulator, build

COOLDOWN_S = 0.3
CALL_TIMEOUT_S = 0.3
FAST_RETRY = RetryPolicy(attempts=3, base_delay_s=0.01, max_delay_s=0.05)
BREAKER = BreakerConfig(consecutive_failures=3, window=10, min_calls=6, cooldown_s=COOLDOWN_S)


@dataclass
class Sim:
    simulator: Simulator
    url: str
    session: aiohttp.ClientSession

    async def behave(self, **behaviour: Any) -> None:
        async with self.session.post(f"{self.url}/_sim/behaviour", json=behaviour) as response:
            assert response.status == 200, await response.text()

    async def charges(self) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.url}/_sim/charges") as response:
            return (await response.json())["charges"]

    async def requests(self) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.url}/_sim/requests") as response:
            return (await response.json())["requests"]


@dataclass
class Setup:
    stripe: Sim
    paypal: Sim
    router: PaymentRouter
    registry: CollectorRegistry

    def attempts(self, provider: str, result: str) -> float:
        value = self.registry.get_sample_value(
            "payment_attempts_total", {"provider": provider, "result": result}
        )
        return value or 0.0

    def breaker_gauge(self, provider: str) -> float | None:
        return self.registry.get_sample_value("payment_breaker_state", {"provider": provider})


async def _serve(simulator: Simulator) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(simulator.app(), shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    runners = []
    sims = {}
    session = aiohttp.ClientSession()
    for kind in ("stripe", "paypal"):
        simulator = build(kind, seed=7)  # type: ignore[arg-type]
        runner, url = await _serve(simulator)
        runners.append(runner)
        sims[kind] = Sim(simulator, url, session)
    registry = CollectorRegistry()
    router = PaymentRouter(
        [
            StripeProvider(
                sims["stripe"].url, DEFAULT_CREDENTIALS["stripe"], timeout_s=CALL_TIMEOUT_S
            ),
            PayPalProvider(
                sims["paypal"].url, DEFAULT_CREDENTIALS["paypal"], timeout_s=CALL_TIMEOUT_S
            ),
        ],
        breaker=BREAKER,
        retry=FAST_RETRY,
        budget_s=1.0,
        metrics=PaymentMetrics(registry),
        rng=random.Random(1),
    )
    yield Setup(sims["stripe"], sims["paypal"], router, registry)
    await router.close()
    await session.close()
    for runner in runners:
        await runner.cleanup()


async def checkout(router: PaymentRouter, order: str, amount: int = 2599, token: str = "tok_visa"):
    auth = await router.authorize(amount, "USD", token, f"{order}:authorize")
    return auth, await router.capture(auth.provider, auth.reference, f"{order}:capture")


# --- the happy path -------------------------------------------------------------------------


async def test_checkout_authorizes_and_captures_once_on_the_primary(setup: Setup) -> None:
    auth, capture = await checkout(setup.router, "order-1")

    assert (auth.provider, auth.amount_cents, auth.currency) == ("stripe", 2599, "USD")
    assert (capture.provider, capture.amount_cents) == ("stripe", 2599)
    [charge] = await setup.stripe.charges()
    assert charge["id"] == auth.reference
    assert (charge["status"], charge["captures"], charge["captured_cents"]) == ("captured", 1, 2599)
    assert charge["idempotency_key"] == "order-1:authorize"
    assert await setup.paypal.charges() == []
    assert setup.attempts("stripe", "success") == 2
    assert setup.router.breakers["stripe"].state is BreakerState.CLOSED
    assert setup.breaker_gauge("stripe") == 0


async def test_the_secondary_works_the_same_way_with_its_own_api(setup: Setup) -> None:
    paypal = setup.router.providers["paypal"]
    auth = await paypal.authorize(1050, "eur", "tok_visa", "p-1:authorize")
    capture = await paypal.capture(auth.reference, "p-1:capture")
    refund = await paypal.refund(capture.reference, 50, "EUR", "p-1:refund:1")

    assert (auth.provider, auth.amount_cents, auth.currency) == ("paypal", 1050, "EUR")
    assert capture.amount_cents == 1050 and capture.reference.startswith("CAP_")
    assert refund.amount_cents == 50
    [charge] = await setup.paypal.charges()
    assert (charge["captures"], charge["refunded_cents"]) == (1, 50)
    # PayPal's shape: an access token first; JSON with decimal strings; the order and its
    # authorization share the key.
    paths = [(r["path"].split("/")[2], r["idempotency_key"]) for r in await setup.paypal.requests()]
    assert paths[:3] == [
        ("oauth2", None),
        ("checkout", "p-1:authorize"),
        ("checkout", "p-1:authorize"),
    ]


# --- retries, idempotency -------------------------------------------------------------------


async def test_transient_errors_are_retried_with_the_same_key_and_charge_once(
    setup: Setup,
) -> None:
    await setup.stripe.behave(fail_next=2)

    auth, _ = await checkout(setup.router, "order-2")

    assert auth.provider == "stripe"
    requests = await setup.stripe.requests()
    authorize_calls = [r for r in requests if r["path"] == "/v1/payment_intents"]
    assert [r["idempotency_key"] for r in authorize_calls] == ["order-2:authorize"] * 3
    assert [r["status"] for r in authorize_calls] == [503, 503, 200]
    [charge] = await setup.stripe.charges()
    assert (charge["authorizations"], charge["captures"]) == (1, 1)
    assert setup.attempts("stripe", "error") == 2


async def test_an_answer_lost_after_the_provider_acted_is_not_applied_twice(setup: Setup) -> None:
    # `lost`: the provider acts, then its answer never arrives (a 502 on the way back). The
    # retry, with the same key, gets the original answer instead of a second charge.
    await setup.stripe.behave(mode="lost")

    auth, capture = await checkout(setup.router, "order-3")

    assert (auth.provider, capture.provider) == ("stripe", "stripe")
    calls = [(r["idempotency_key"], r["status"]) for r in await setup.stripe.requests()]
    assert calls == [
        ("order-3:authorize", 502),
        ("order-3:authorize", 200),
        ("order-3:capture", 502),
        ("order-3:capture", 200),
    ]
    [charge] = await setup.stripe.charges()
    assert (charge["id"], charge["authorizations"], charge["captures"]) == (auth.reference, 1, 1)
    assert await setup.paypal.requests() == []


async def test_the_same_key_with_a_different_request_is_refused(setup: Setup) -> None:
    await setup.router.authorize(1000, "USD", "tok_visa", "order-4:authorize")
    with pytest.raises(PermanentError) as refused:
        await setup.router.authorize(2000, "USD", "tok_visa", "order-4:authorize")
    assert refused.value.code == "idempotency_key_reused"
    assert len(await setup.stripe.charges()) == 1


# --- permanent errors -----------------------------------------------------------------------


async def test_a_decline_is_neither_retried_nor_failed_over(setup: Setup) -> None:
    with pytest.raises(Declined) as declined:
        await setup.router.authorize(2599, "USD", "tok_declined", "order-5:authorize")
    assert (declined.value.provider, declined.value.code) == ("stripe", "generic_decline")
    assert len(await setup.stripe.requests()) == 1
    assert await setup.paypal.requests() == []
    assert setup.router.breakers["stripe"].state is BreakerState.CLOSED
    assert setup.attempts("stripe", "declined") == 1


async def test_paypal_declines_map_to_the_same_error(setup: Setup) -> None:
    paypal = setup.router.providers["paypal"]
    with pytest.raises(Declined) as declined:
        await paypal.authorize(2599, "USD", "tok_insufficient", "p-5:authorize")
    assert (declined.value.provider, declined.value.code) == ("paypal", "insufficient_funds")


async def test_card_numbers_are_refused_and_never_stored(setup: Setup) -> None:
    for provider in setup.router.providers.values():
        with pytest.raises(PermanentError) as refused:
            await provider.authorize(100, "USD", "4242 4242 4242 4242", f"pan-{provider.name}")
        assert refused.value.code == "card_number_rejected"
        assert str(4242424242424242) not in str(refused.value)
    assert await setup.stripe.charges() == [] and await setup.paypal.charges() == []


# --- breaker and failover -------------------------------------------------------------------


async def test_a_failing_primary_fails_over_opens_its_breaker_and_closes_after_recovery(
    setup: Setup,
) -> None:
    await setup.stripe.behave(mode="fail")

    first, _ = await checkout(setup.router, "order-10")
    assert first.provider == "paypal"  # three attempts on Stripe, then PayPal
    assert setup.router.breakers["stripe"].state is BreakerState.OPEN
    assert setup.breaker_gauge("stripe") == 2
    calls_when_opened = len(await setup.stripe.requests())

    for n in range(11, 14):
        auth, capture = await checkout(setup.router, f"order-{n}")
        assert (auth.provider, capture.provider) == ("paypal", "paypal")
    assert len(await setup.stripe.requests()) == calls_when_opened  # not even tried
    assert setup.attempts("stripe", "breaker_open") == 3
    assert len(await setup.paypal.charges()) == 4

    await setup.stripe.behave(mode="ok")
    await asyncio.sleep(COOLDOWN_S + 0.05)
    assert setup.breaker_gauge("stripe") == 1  # half-open: the next call is the trial
    auth, _ = await checkout(setup.router, "order-14")
    assert auth.provider == "stripe"
    assert setup.router.breakers["stripe"].state is BreakerState.CLOSED
    assert setup.breaker_gauge("stripe") == 0


async def test_a_failed_trial_reopens_the_breaker(setup: Setup) -> None:
    await setup.stripe.behave(mode="fail")
    await checkout(setup.router, "order-20")
    await asyncio.sleep(COOLDOWN_S + 0.05)

    auth, _ = await checkout(setup.router, "order-21")  # the trial fails: PayPal serves

    assert auth.provider == "paypal"
    trial_calls = [r for r in await setup.stripe.requests() if "order-21" in r["idempotency_key"]]
    assert len(trial_calls) == 1  # one trial, then the breaker refused the retries
    assert setup.router.breakers["stripe"].state is BreakerState.OPEN


async def test_a_failure_rate_over_the_window_opens_the_breaker(setup: Setup) -> None:
    # Every other call fails: never 3 in a row, but half of the last 6 or more.
    breaker = setup.router.breakers["stripe"]
    for n in range(6):
        if n % 2:
            breaker.record_failure()
        else:
            breaker.record_success()
    assert breaker.state is BreakerState.OPEN


async def test_capture_does_not_fail_over_when_its_provider_is_down(setup: Setup) -> None:
    auth = await setup.router.authorize(2599, "USD", "tok_visa", "order-30:authorize")
    await setup.stripe.behave(mode="fail")

    with pytest.raises(TransientError):
        await setup.router.capture(auth.provider, auth.reference, "order-30:capture")
    with pytest.raises(BreakerOpen):  # opened after three failures: refused at once
        await setup.router.capture(auth.provider, auth.reference, "order-30:capture")
    assert await setup.paypal.requests() == []


async def test_when_every_provider_fails_the_caller_is_told_it_may_retry(setup: Setup) -> None:
    await setup.stripe.behave(mode="fail")
    await setup.paypal.behave(mode="fail")

    with pytest.raises(ProvidersUnavailable) as unavailable:
        await setup.router.authorize(2599, "USD", "tok_visa", "order-40:authorize")

    assert [error.provider for error in unavailable.value.errors] == ["stripe", "paypal"]
    assert isinstance(unavailable.value, TransientError)


async def saga_checkout(router: PaymentRouter, order: str) -> tuple[str, str]:
    """What the order saga does: each step retried later, with its own key, while the error is
    transient (breaker open, every provider down)."""
    for _ in range(20):
        try:
            auth = await router.authorize(2599, "USD", "tok_visa", f"{order}:authorize")
            break
        except TransientError:
            await asyncio.sleep(COOLDOWN_S / 2)
    else:
        pytest.fail(f"{order} was never authorized")
    for _ in range(20):
        try:
            capture = await router.capture(auth.provider, auth.reference, f"{order}:capture")
            return auth.provider, capture.reference
        except TransientError:
            await asyncio.sleep(COOLDOWN_S / 2)
    pytest.fail(f"{order} was never captured")


async def test_flaky_providers_still_charge_each_order_exactly_once(setup: Setup) -> None:
    await setup.stripe.behave(mode="flaky", failure_rate=0.3, seed=3)
    await setup.paypal.behave(mode="flaky", failure_rate=0.3, seed=4)

    orders = [f"order-5{n:02d}" for n in range(25)]
    results = await asyncio.gather(*(saga_checkout(setup.router, order) for order in orders))

    assert len(results) == len(orders)
    charges = await setup.stripe.charges() + await setup.paypal.charges()
    by_key = {charge["idempotency_key"]: charge for charge in charges}
    assert len(charges) == len(orders) == len(by_key)  # one authorization per order, in all
    assert all(charge["captures"] == 1 for charge in charges)
    assert setup.attempts("stripe", "error") + setup.attempts("paypal", "error") > 0


# --- slow and hanging providers -------------------------------------------------------------


async def test_a_slow_primary_within_the_timeout_still_serves(setup: Setup) -> None:
    await setup.stripe.behave(mode="slow", delay_ms=100)
    auth, _ = await checkout(setup.router, "order-60")
    assert auth.provider == "stripe"


async def test_a_hanging_primary_costs_a_bounded_time_and_the_secondary_serves(
    setup: Setup,
) -> None:
    await setup.stripe.behave(mode="timeout")
    started = time.monotonic()

    auth, _ = await checkout(setup.router, "order-61")

    elapsed = time.monotonic() - started
    assert auth.provider == "paypal"
    # Three attempts of at most CALL_TIMEOUT_S each (and at most the 1 s budget), then PayPal.
    assert elapsed < 1.5, elapsed
    assert setup.attempts("stripe", "error") == 3
    assert await setup.stripe.charges() == []  # the hung calls never processed anything


async def test_a_slow_primary_that_acts_late_is_not_applied_twice(setup: Setup) -> None:
    # Slower than the client's timeout: each attempt is processed after the client gave up.
    await setup.stripe.behave(mode="slow", delay_ms=int(CALL_TIMEOUT_S * 1000) + 150)
    auth, _ = await checkout(setup.router, "order-62")
    assert auth.provider == "paypal"
    await asyncio.sleep(0.3)  # the abandoned attempts finish on the provider's side
    [charge] = await setup.stripe.charges()  # three attempts with one key: one authorization
    assert charge["idempotency_key"] == "order-62:authorize" and charge["captures"] == 0
    # ... left authorized but never captured: see the doubt about orphaned authorizations.


# --- voids and refunds ----------------------------------------------------------------------


async def test_void_releases_an_authorization(setup: Setup) -> None:
    for provider in ("stripe", "paypal"):
        auth = await setup.router.providers[provider].authorize(
            700, "USD", "tok_visa", f"v-{provider}:authorize"
        )
        await setup.router.void(provider, auth.reference, f"v-{provider}:void")
        await setup.router.void(provider, auth.reference, f"v-{provider}:void")  # a replay
        with pytest.raises(PermanentError):
            await setup.router.capture(provider, auth.reference, f"v-{provider}:capture")
    for sim in (setup.stripe, setup.paypal):
        [charge] = await sim.charges()
        assert (charge["status"], charge["voids"], charge["captures"]) == ("voided", 1, 0)


@pytest.mark.parametrize("provider", ["stripe", "paypal"])
async def test_refunds_partial_then_the_rest_and_never_more(setup: Setup, provider: str) -> None:
    auth = await setup.router.providers[provider].authorize(
        5000, "USD", "tok_visa", f"r-{provider}:authorize"
    )
    capture = await setup.router.capture(provider, auth.reference, f"r-{provider}:capture")
    refund = setup.router.refund

    first = await refund(provider, capture.reference, 1500, "USD", f"r-{provider}:refund:1")
    again = await refund(provider, capture.reference, 1500, "USD", f"r-{provider}:refund:1")
    assert again.reference == first.reference  # same key: the same refund, not a second one
    with pytest.raises(PermanentError):
        await refund(provider, capture.reference, 4000, "USD", f"r-{provider}:refund:2")
    await refund(provider, capture.reference, 3500, "USD", f"r-{provider}:refund:3")

    sim = setup.stripe if provider == "stripe" else setup.paypal
    [charge] = await sim.charges()
    assert (charge["refunded_cents"], charge["refunds"]) == (5000, 2)


# --- PayPal's OAuth2 access tokens ---------------------------------------------------------

TOKEN_PATH = "/v1/oauth2/token"


def exchanges(requests: list[dict[str, Any]]) -> list[int]:
    """The statuses of the token exchanges among a simulator's requests."""
    return [r["status"] for r in requests if r["path"] == TOKEN_PATH]


def paypal_of(setup: Setup, credentials: str = DEFAULT_CREDENTIALS["paypal"]) -> PayPalProvider:
    return PayPalProvider(setup.paypal.url, credentials, setup.paypal.session, timeout_s=1.0)


async def test_one_access_token_serves_many_calls(setup: Setup) -> None:
    paypal = paypal_of(setup)
    for n in range(3):
        auth = await paypal.authorize(1000, "USD", "tok_visa", f"t-{n}:authorize")
        capture = await paypal.capture(auth.reference, f"t-{n}:capture")
        await paypal.refund(capture.reference, 100, "USD", f"t-{n}:refund")

    requests = await setup.paypal.requests()
    assert exchanges(requests) == [200]  # one exchange, first
    assert requests[0]["path"] == TOKEN_PATH
    assert [r["status"] for r in requests[1:]] == [201] * 12  # no call was refused


async def test_the_simulator_refuses_the_client_secret_and_expired_tokens(setup: Setup) -> None:
    session, url = setup.paypal.session, setup.paypal.url
    order = {"intent": "AUTHORIZE"}
    for header in ({"Authorization": "Bearer sim-secret"}, {}):
        async with session.post(f"{url}/v2/checkout/orders", json=order, headers=header) as r:
            assert r.status == 401
            assert (await r.json())["error"] == "invalid_token"
    await setup.paypal.behave(token_ttl_s=1)
    wrong = {"Authorization": aiohttp.encode_basic_auth("sim-client", "not-the-secret")}
    form = {"grant_type": "client_credentials"}
    async with session.post(f"{url}{TOKEN_PATH}", data=form, headers=wrong) as r:
        assert (r.status, (await r.json())["error"]) == (401, "invalid_client")
    right = {"Authorization": aiohttp.encode_basic_auth("sim-client", "sim-secret")}
    async with session.post(
        f"{url}{TOKEN_PATH}", data={"grant_type": "password"}, headers=right
    ) as r:
        assert (r.status, (await r.json())["error"]) == (400, "unsupported_grant_type")
    async with session.post(f"{url}{TOKEN_PATH}", data=form, headers=right) as r:
        token = await r.json()
    assert (token["token_type"], token["expires_in"]) == ("Bearer", 1)
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    async with session.post(f"{url}/v2/checkout/orders", json={}, headers=bearer) as r:
        assert r.status == 422  # past authentication: the body is what is wrong
    await asyncio.sleep(1.05)
    async with session.post(f"{url}/v2/checkout/orders", json={}, headers=bearer) as r:
        assert r.status == 401
        assert (await r.json())["error"] == "invalid_token"


async def test_a_token_is_renewed_before_it_expires(setup: Setup) -> None:
    await setup.paypal.behave(token_ttl_s=1)
    paypal = paypal_of(setup)
    await paypal.authorize(1000, "USD", "tok_visa", "e-1:authorize")
    await asyncio.sleep(1.0)  # renewed a tenth of its life before it ends, so: renewed now

    await paypal.authorize(1000, "USD", "tok_visa", "e-2:authorize")

    requests = await setup.paypal.requests()
    assert exchanges(requests) == [200, 200]
    assert 401 not in [r["status"] for r in requests]  # renewed in time, never refused


async def test_a_refused_token_is_renewed_once_and_the_call_proceeds(setup: Setup) -> None:
    paypal = paypal_of(setup)
    auth = await paypal.authorize(1000, "USD", "tok_visa", "rv-1:authorize")
    async with setup.paypal.session.post(f"{setup.paypal.url}/_sim/revoke_tokens") as response:
        assert (await response.json())["revoked"] == 1

    capture = await paypal.capture(auth.reference, "rv-1:capture")

    assert capture.amount_cents == 1000
    calls = [(r["path"].rsplit("/", 1)[-1], r["status"]) for r in await setup.paypal.requests()]
    assert calls[-3:] == [("capture", 401), ("token", 200), ("capture", 201)]
    [charge] = await setup.paypal.charges()
    assert charge["captures"] == 1


async def test_credentials_revoked_in_flight_stop_after_one_renewal(setup: Setup) -> None:
    paypal = paypal_of(setup)
    auth = await paypal.authorize(1000, "USD", "tok_visa", "rot-1:authorize")
    # The secret is rotated at PayPal and the old tokens revoked, but not our file yet.
    setup.paypal.simulator.client_secret = "rotated"
    setup.paypal.simulator.tokens.clear()

    with pytest.raises(PermanentError) as refused:
        await paypal.capture(auth.reference, "rot-1:capture")

    assert refused.value.code == "invalid_client"
    calls = [(r["path"].rsplit("/", 1)[-1], r["status"]) for r in await setup.paypal.requests()]
    assert calls[-2:] == [("capture", 401), ("token", 401)]  # one renewal tried, no loop
    assert len(calls) == 5  # token, order, authorize, then those two


async def test_wrong_credentials_are_a_clear_permanent_error(setup: Setup) -> None:
    paypal = paypal_of(setup, "sim-client:not-the-secret")
    for n in range(2):
        with pytest.raises(PermanentError) as refused:
            await paypal.authorize(1000, "USD", "tok_visa", f"w-{n}:authorize")
        assert not isinstance(refused.value, TransientError)
        assert (refused.value.code, refused.value.status) == ("invalid_client", 401)
        assert "client_id:secret" in str(refused.value)
        assert "not-the-secret" not in str(refused.value)
    requests = await setup.paypal.requests()
    assert exchanges(requests) == [401, 401] and len(requests) == 2  # no API call went out
    for malformed in ("no-colon", ":secret", "id:", "id:se cret"):
        with pytest.raises(ValueError, match="client_id:secret"):
            paypal_of(setup, malformed)


async def test_concurrent_calls_share_one_exchange_and_its_outcome(setup: Setup) -> None:
    await setup.paypal.behave(fail_next=1, delay_ms=100)  # the exchange is slow, then fails
    paypal = paypal_of(setup)
    failed = await asyncio.gather(
        *(paypal.authorize(100, "USD", "tok_visa", f"c-{n}:authorize") for n in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(error, TransientError) for error in failed), failed
    assert exchanges(await setup.paypal.requests()) == [503]  # one exchange, one answer for all

    # A caller that gives up waiting does not take the exchange down with it.
    impatient = asyncio.create_task(
        asyncio.wait_for(paypal.authorize(100, "USD", "tok_visa", "c-a:authorize"), 0.02)
    )
    results = await asyncio.gather(
        *(paypal.authorize(100, "USD", "tok_visa", f"c-{n}:authorize") for n in range(5, 15))
    )
    with pytest.raises(TimeoutError):
        await impatient
    assert len({auth.reference for auth in results}) == 10
    assert exchanges(await setup.paypal.requests()) == [503, 200]
    await paypal.close()


# --- small pieces ---------------------------------------------------------------------------


def test_amounts_and_card_numbers() -> None:
    assert format_amount(1234, "USD") == "12.34" and format_amount(5, "eur") == "0.05"
    assert format_amount(1234, "JPY") == "1234"
    assert parse_amount("12.34", "USD") == 1234 and parse_amount("1234", "JPY") == 1234
    with pytest.raises(ValueError):
        parse_amount("12.345", "USD")
    assert contains_pan({"source": {"number": "4242-4242-4242-4242"}})
    assert contains_pan({"n": 4111111111111111})
    assert not contains_pan({"token": "tok_visa", "order": "1234567890123"})  # fails Luhn
    assert not contains_pan({"amount": "2599", "phone": "+44 20 7946 0958"})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_the_simulator_runs_as_a_command() -> None:
    port = _free_port()
    command = ["-m", "services.payment.simulators", "--kind", "paypal", "--port", str(port)]
    process = subprocess.Popen(
        [sys.executable, *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(600):  # up to 30 s: a cold start imports (and compiles) the module
                try:
                    async with session.get(f"http://127.0.0.1:{port}/_sim/behaviour") as response:
                        assert (await response.json())["mode"] == "ok"
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("the simulator did not start")
            provider = PayPalProvider(
                f"http://127.0.0.1:{port}", DEFAULT_CREDENTIALS["paypal"], session
            )
            auth = await provider.authorize(100, "USD", "tok_visa", "cli-1")
            assert auth.reference.startswith("AUTH_")
    finally:
        process.terminate()
        process.wait(timeout=5)
