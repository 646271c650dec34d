"""The payment service against the real database and the shipped provider simulators: one
charge per Idempotency-Key, failover, declines, fraud rules, refunds and bad input."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.kit.auth import Tokens
from services.kit.settings import SettingsError
from services.payment.app import PaymentSettings, init_app
from services.payment.simulators import DEFAULT_CREDENTIALS, Simulator, build
from stacks.local.data_tier import DataTier


@pytest.fixture
async def providers(aiohttp_server) -> dict[str, tuple[Simulator, TestServer]]:
    made = {}
    for kind in ("stripe", "paypal"):
        simulator = build(kind)
        made[kind] = (simulator, await aiohttp_server(simulator.app()))
    return made


@pytest.fixture
async def client(aiohttp_client, settings_for, providers, tmp_path: Path) -> TestClient:
    key_files = {kind: tmp_path / f"{kind}-key" for kind in DEFAULT_CREDENTIALS}
    for kind, path in key_files.items():
        path.write_text(DEFAULT_CREDENTIALS[kind])
    settings = settings_for(
        PaymentSettings,
        "payment",
        STRIPE_URL=str(providers["stripe"][1].make_url("")).rstrip("/"),
        STRIPE_API_KEY_FILE=str(key_files["stripe"]),
        PAYPAL_URL=str(providers["paypal"][1].make_url("")).rstrip("/"),
        PAYPAL_API_KEY_FILE=str(key_files["paypal"]),
        MAX_AMOUNT_CENTS="500000",
        PROVIDER_TIMEOUT_SECONDS="0.5",
        BREAKER_COOLDOWN_SECONDS="0.5",
        STRAY_SWEEP_SECONDS="0.2",
        STRAY_PENDING_GRACE_SECONDS="60",
    )
    return await aiohttp_client(init_app(settings))


def test_the_paypal_credentials_file_must_hold_client_id_and_secret(
    settings_for, tmp_path: Path
) -> None:
    stripe_key, paypal_key = tmp_path / "stripe", tmp_path / "paypal"
    stripe_key.write_text(DEFAULT_CREDENTIALS["stripe"])
    paypal_key.write_text("a-bare-secret-value\n")
    with pytest.raises(SettingsError) as error:
        settings_for(
            PaymentSettings,
            "payment",
            STRIPE_URL="http://127.0.0.1:9",
            STRIPE_API_KEY_FILE=str(stripe_key),
            PAYPAL_URL="http://127.0.0.1:9",
            PAYPAL_API_KEY_FILE=str(paypal_key),
        )
    [(variable, problem)] = error.value.problems
    assert variable == "PAYPAL_API_KEY_FILE" and "client_id:secret" in problem
    assert "a-bare-secret-value" not in str(error.value)  # the secret is never echoed


@pytest.fixture
def saga(tokens: Tokens) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.issue('order', 'service', 'saga')}"}


def charge(amount: int = 2599, user: str | None = None, token: str = "tok_visa") -> dict[str, Any]:
    return {
        "order_id": uuid.uuid4().int % 10**12 + 1,
        "user_id": user or uuid.uuid4().hex[:12],
        "amount_cents": amount,
        "currency": "USD",
        "token": token,
    }


def key() -> str:
    return f"order-{uuid.uuid4().hex}"


async def sim(server: TestServer, method: str, path: str, **body: Any) -> Any:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.request(method, server.make_url(path), json=body or None) as response,
    ):
        return await response.json()


async def test_a_charge_is_captured_once_per_key(
    client: TestClient, saga: dict[str, str], providers
) -> None:
    body, idempotency = charge(), key()
    headers = {**saga, "Idempotency-Key": idempotency}
    responses = await asyncio.gather(
        *(client.post("/api/payments", json=body, headers=headers) for _ in range(3))
    )
    payments = [await r.json() for r in responses]
    assert {r.status for r in responses} == {201}
    assert len({p["id"] for p in payments}) == 1
    assert payments[0]["status"] == "captured" and payments[0]["provider"] == "stripe"
    ledger = (await sim(providers["stripe"][1], "GET", "/_sim/charges"))["charges"]
    mine = [c for c in ledger if c["idempotency_key"] == f"{idempotency}:authorize"]
    assert [(c["authorizations"], c["captures"], c["captured_cents"]) for c in mine] == [
        (1, 1, 2599)
    ]
    different = await client.post(
        "/api/payments", json={**body, "amount_cents": 1}, headers=headers
    )
    assert different.status == 409


async def test_checkouts_fail_over_when_the_primary_fails(
    client: TestClient, saga: dict[str, str], providers
) -> None:
    await sim(providers["stripe"][1], "POST", "/_sim/behaviour", mode="fail")
    response = await client.post(
        "/api/payments", json=charge(), headers={**saga, "Idempotency-Key": key()}
    )
    assert response.status == 201
    assert (await response.json())["provider"] == "paypal"
    metrics = await (await client.get("/metrics")).text()
    assert 'payment_attempts_total{provider="stripe",result="error"}' in metrics


async def test_declines_and_fraud_answer_402_and_record_why(
    client: TestClient, saga: dict[str, str]
) -> None:
    declined = await client.post(
        "/api/payments",
        json=charge(token="tok_declined"),
        headers={**saga, "Idempotency-Key": key()},
    )
    assert declined.status == 402, await declined.text()
    too_much = await client.post(
        "/api/payments", json=charge(amount=900_000), headers={**saga, "Idempotency-Key": key()}
    )
    assert too_much.status == 402 and "limit" in (await too_much.json())["message"]


async def test_a_refund_happens_once(client: TestClient, saga: dict[str, str]) -> None:
    paid = await (
        await client.post(
            "/api/payments", json=charge(), headers={**saga, "Idempotency-Key": key()}
        )
    ).json()
    for _ in range(2):
        refunded = await client.post(f"/api/payments/{paid['id']}/refund", headers=saga)
        assert refunded.status == 200 and (await refunded.json())["status"] == "refunded"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"token": "4242424242424242"}, "body.token"),  # a card number is never accepted
        ({"amount_cents": 0}, "body.amount_cents"),
        ({"currency": "XXX"}, "body.currency"),
        ({"order_id": -1}, "body.order_id"),
    ],
)
async def test_bad_charges_name_the_field(
    client: TestClient, saga: dict[str, str], change: dict[str, Any], field: str
) -> None:
    response = await client.post(
        "/api/payments", json={**charge(), **change}, headers={**saga, "Idempotency-Key": key()}
    )
    assert response.status == 422
    assert field in [f["field"] for f in (await response.json())["fields"]]


async def test_only_the_saga_may_charge(client: TestClient, tokens: Tokens) -> None:
    shopper = {
        "Authorization": f"Bearer {tokens.issue('5', 'customer', 's')}",
        "Idempotency-Key": key(),
    }
    assert (await client.post("/api/payments", json=charge(), headers=shopper)).status == 403
    assert (
        await client.post("/api/payments", json=charge(), headers={"Idempotency-Key": key()})
    ).status == 401


async def held_at(server: TestServer, provider_key: str) -> list[dict[str, Any]]:
    charges = (await sim(server, "GET", "/_sim/charges"))["charges"]
    return [c for c in charges if c["idempotency_key"] == provider_key]


async def until_status(server: TestServer, provider_key: str, status: str) -> list[dict[str, Any]]:
    for _ in range(100):
        found = await held_at(server, provider_key)
        if found and all(c["status"] == status for c in found):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"{provider_key}: {await held_at(server, provider_key)}")


async def stray_outcomes(platform: DataTier, provider_key: str) -> dict[str, str | None]:
    connection = await asyncpg.connect(platform.postgres.primary_dsn)
    try:
        rows = await connection.fetch(
            "SELECT provider, outcome FROM payment_strays WHERE idempotency_key = $1",
            provider_key,
        )
    finally:
        await connection.close()
    return {r["provider"]: r["outcome"] for r in rows}


async def test_an_authorization_left_at_a_failed_provider_is_voided(
    client: TestClient, saga: dict[str, str], providers, platform: DataTier
) -> None:
    """Stripe answers too late for every attempt but acts on the first: the charge goes to
    PayPal and Stripe holds the customer's money. Once Stripe is quick again, the sweeper
    voids that hold."""
    stripe, paypal = providers["stripe"][1], providers["paypal"][1]
    await sim(stripe, "POST", "/_sim/behaviour", mode="slow", delay_ms=700)  # timeout: 0.5 s
    k = key()
    response = await client.post(
        "/api/payments", json=charge(), headers={**saga, "Idempotency-Key": k}
    )
    assert response.status == 201 and (await response.json())["provider"] == "paypal"
    provider_key = f"{k}:authorize"
    # The stray hold: Stripe finishes the first call after the charge has moved on.
    await until_status(stripe, provider_key, "authorized")
    await asyncio.sleep(0.5)  # sweeps while Stripe is still too slow: nothing resolved
    assert await stray_outcomes(platform, provider_key) == {"stripe": None}

    await sim(stripe, "POST", "/_sim/behaviour", mode="ok")
    [voided] = await until_status(stripe, provider_key, "voided")
    assert voided["captures"] == 0
    assert await stray_outcomes(platform, provider_key) == {"stripe": "voided"}
    [paid] = await held_at(paypal, provider_key)
    assert (paid["status"], paid["captures"]) == ("captured", 1)


async def test_a_stray_that_became_the_payment_is_never_voided(
    client: TestClient, saga: dict[str, str], providers, platform: DataTier
) -> None:
    """Both providers fail (503, the saga retries later with the same key); by the retry
    Stripe is back and the payment is made there. The sweeper must leave that one alone and
    only clear PayPal."""
    stripe, paypal = providers["stripe"][1], providers["paypal"][1]
    for server in (stripe, paypal):
        await sim(server, "POST", "/_sim/behaviour", mode="fail")
    k, body = key(), charge()
    headers = {**saga, "Idempotency-Key": k}
    assert (await client.post("/api/payments", json=body, headers=headers)).status == 503
    for server in (stripe, paypal):
        await sim(server, "POST", "/_sim/behaviour", mode="ok")
    await asyncio.sleep(0.6)  # the breakers' cooldown
    response = await client.post("/api/payments", json=body, headers=headers)
    assert response.status == 201 and (await response.json())["provider"] == "stripe"
    provider_key = f"{k}:authorize"
    for _ in range(100):
        outcomes = await stray_outcomes(platform, provider_key)
        if None not in outcomes.values():
            break
        await asyncio.sleep(0.1)
    assert outcomes == {"stripe": "is_the_payment", "paypal": "voided"}
    [paid] = await held_at(stripe, provider_key)
    assert (paid["status"], paid["captures"]) == ("captured", 1)
    assert [c["status"] for c in await held_at(paypal, provider_key)] == ["voided"]
