"""The checkout saga end to end, on the real data tier: order, inventory and payment services
in process, the shipped payment simulators, events through the outbox and Redis Streams."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.inventory.app import InventorySettings
from services.inventory.app import init_app as inventory_app
from services.kit.auth import Tokens
from services.kit.cache import client as redis_client
from services.kit.revocation import VERDICT_TTL_S, Revocations
from services.kit.settings import HostPort
from services.order.app import OrderSettings
from services.order.app import init_app as order_app
from services.order.warehouse_simulator import WarehouseSimulator
from services.payment.app import PaymentSettings
from services.payment.app import init_app as payment_app
from services.payment.simulators import DEFAULT_CREDENTIALS, Behaviour, build
from stacks.local.data_tier import DataTier
from tests.services.test_inventory_service import new_sku

BREAKER_COOLDOWN_S = 2.0


def url(server: Any) -> str:
    return str(server.make_url("")).rstrip("/")


async def payment_with_simulators(
    aiohttp_server: Any, settings_for: Any, tmp_path: Path, **env: str
) -> tuple[Any, Any, Any]:
    """The shipped Stripe and PayPal simulators and the payment service calling them:
    (stripe, paypal, payment server). `env`: more of the payment service's settings."""
    stripe, paypal = build("stripe"), build("paypal")
    stripe_server, paypal_server = (
        await aiohttp_server(stripe.app()),
        await aiohttp_server(paypal.app()),
    )
    key_files = {kind: tmp_path / f"{kind}-key" for kind in DEFAULT_CREDENTIALS}
    for kind, path in key_files.items():
        path.write_text(DEFAULT_CREDENTIALS[kind])
    payment = await aiohttp_server(
        payment_app(
            settings_for(
                PaymentSettings,
                "payment",
                STRIPE_URL=url(stripe_server),
                STRIPE_API_KEY_FILE=str(key_files["stripe"]),
                PAYPAL_URL=url(paypal_server),
                PAYPAL_API_KEY_FILE=str(key_files["paypal"]),
                **env,
            )
        )
    )
    return stripe, paypal, payment


async def warehouse_simulator(
    aiohttp_server: Any, tmp_path: Path
) -> tuple[WarehouseSimulator, dict[str, str]]:
    """The shipped warehouse simulator, and the order service's settings that reach it."""
    warehouse = WarehouseSimulator(api_key="warehouse-test-key")
    server = await aiohttp_server(warehouse.app())
    key_file = tmp_path / "warehouse-key"
    key_file.write_text(warehouse.api_key)
    return warehouse, {"WAREHOUSE_URL": url(server), "WAREHOUSE_API_KEY_FILE": str(key_file)}


@pytest.fixture
async def shop(aiohttp_server, aiohttp_client, settings_for, tmp_path: Path) -> dict[str, Any]:
    return await build_shop(aiohttp_server, aiohttp_client, settings_for, tmp_path)


async def build_shop(
    aiohttp_server: Any, aiohttp_client: Any, settings_for: Any, tmp_path: Path
) -> dict[str, Any]:
    """Order (its saga and fulfilment in process), inventory and payment services, with the
    shipped simulators of the payment providers and the warehouse."""
    stripe, paypal, payment = await payment_with_simulators(
        aiohttp_server, settings_for, tmp_path, BREAKER_COOLDOWN_SECONDS=str(BREAKER_COOLDOWN_S)
    )
    inventory = await aiohttp_server(inventory_app(settings_for(InventorySettings, "inventory")))
    warehouse, reach_warehouse = await warehouse_simulator(aiohttp_server, tmp_path)
    order = await aiohttp_client(
        order_app(
            settings_for(
                OrderSettings,
                "order",
                INVENTORY_URL=url(inventory),
                PAYMENT_URL=url(payment),
                **reach_warehouse,
            )
        )
    )
    return {
        "order": order,
        "inventory": inventory,
        "payment": payment,
        "stripe": stripe,
        "paypal": paypal,
        "warehouse": warehouse,
    }


@pytest.fixture
def shopper(tokens: Tokens) -> dict[str, str]:
    return new_shopper(tokens)


async def attempt(
    client: TestClient,
    shopper: dict[str, str],
    sku: str,
    quantity: int,
    token: str = "tok_visa",
    key: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST /api/orders for one line: (status, answer)."""
    response = await client.post(
        "/api/orders",
        json={"items": [{"sku": sku, "quantity": quantity}], "payment_token": token},
        headers={**shopper, "Idempotency-Key": key or uuid.uuid4().hex},
    )
    return response.status, await response.json()


async def place(
    client: TestClient, shopper: dict[str, str], sku: str, quantity: int, token: str = "tok_visa"
) -> int:
    status, answer = await attempt(client, shopper, sku, quantity, token)
    assert status == 201, answer
    return answer["id"]


async def settled(
    client: TestClient, shopper: dict[str, str], order_id: int, timeout_s: float = 90
) -> str:
    """The order's status once the saga has finished with it."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        status = (await (await client.get(f"/api/orders/{order_id}", headers=shopper)).json())[
            "status"
        ]
        if status in ("shipped", "cancelled") or asyncio.get_running_loop().time() > deadline:
            return status
        await asyncio.sleep(0.1)


async def stock(shop: dict[str, Any], sku: str) -> tuple[int, int]:
    async with shop["order"].session.get(
        shop["inventory"].make_url(f"/api/inventory/{sku}")
    ) as response:
        level = await response.json()
    return level["available"], level["reserved"]


async def test_a_paid_order_is_confirmed_and_shipped(shop, shopper, platform: DataTier) -> None:
    sku = await new_sku(platform, 10)
    order_id = await place(shop["order"], shopper, sku, 3)
    assert await settled(shop["order"], shopper, order_id) == "shipped"
    assert await stock(shop, sku) == (7, 0)  # sold: no longer reserved
    metrics = await (await shop["order"].get("/metrics")).text()
    for group in ("order-saga", "fulfilment"):  # exported for the alert; none given up on
        assert f'events_dead_letters{{group="{group}"}} 0.0' in metrics
    # The saga ran on connections of its own, never queued behind the API's requests.
    assert 'db_pool_wait_seconds_count{pool="workers-primary",service="order"}' in metrics
    captured = [
        p
        for p in shop["stripe"].payments.values()
        if p.idempotency_key == f"checkout-order-{order_id}:authorize"
    ]
    assert [(p.captures, p.captured_cents) for p in captured] == [(1, captured[0].amount_cents)]


async def test_the_saga_gets_a_new_token_when_its_own_is_revoked(
    shop, shopper, platform: DataTier
) -> None:
    """An operator revokes every token of the order service (a leaked one): its checkouts
    carry on, with a token issued after the cut-off, instead of failing for the token's life."""
    sku = await new_sku(platform, 10)
    first = await place(shop["order"], shopper, sku, 1)
    assert await settled(shop["order"], shopper, first) == "shipped"
    nodes = [
        HostPort(host, int(port)) for host, port in (n.rsplit(":", 1) for n in platform.redis.nodes)
    ]
    revocations = Revocations(redis_client(nodes, platform.redis.password), owns_client=True)
    try:
        await revocations.end_all("order")
    finally:
        await revocations.close()
    await asyncio.sleep(VERDICT_TTL_S + 0.2)  # the peers' cached verdicts on the old token
    second = await place(shop["order"], shopper, sku, 1)
    assert await settled(shop["order"], shopper, second, timeout_s=30) == "shipped"


async def test_not_enough_stock_cancels_the_order(shop, shopper, platform: DataTier) -> None:
    sku = await new_sku(platform, 2)
    order_id = await place(shop["order"], shopper, sku, 5)
    assert await settled(shop["order"], shopper, order_id) == "cancelled"
    assert await stock(shop, sku) == (2, 0)
    assert not [
        p for p in shop["stripe"].payments.values() if str(order_id) in (p.idempotency_key or "")
    ]


async def test_a_sold_out_sku_is_refused_at_the_door(
    shop, shopper, tokens: Tokens, platform: DataTier
) -> None:
    """Once the stock feed says nothing is left, a purchase answers 409 `sold_out` without
    writing anything; the key of an order placed before still answers with that order, and
    a restock lets purchases through again."""
    sku = await new_sku(platform, 2)
    client = shop["order"]
    first_key = uuid.uuid4().hex
    status, first = await attempt(client, shopper, sku, 2, key=first_key)
    assert status == 201
    assert await settled(client, shopper, first["id"]) == "shipped"

    user_id = uuid.uuid4().int % 10**9 + 2 * 10**9
    latecomer = {"Authorization": f"Bearer {tokens.issue(str(user_id), 'customer', 'saga')}"}
    refusal = await eventually_refused(client, latecomer, sku)
    assert refusal["error"] == "sold_out" and sku in refusal["message"]
    connection = await asyncpg.connect(platform.postgres.primary_dsn)
    try:  # the refusal wrote nothing: the latecomer has no order and no spent key
        written = await connection.fetchval(
            """SELECT (SELECT count(*) FROM orders WHERE user_id = $1 AND status <> 'cancelled')
                    + (SELECT count(*) FROM idempotency_keys k WHERE user_id = $1
                        AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = k.order_id))""",
            user_id,
        )
        assert written == 0
    finally:
        await connection.close()

    # A retry of the key that bought the stock gets its order, not "sold out".
    status, again = await attempt(client, shopper, sku, 2, key=first_key)
    assert (status, again["id"]) == (200, first["id"])

    # A restock is published on the feed: purchases go through again.
    admin = {"Authorization": f"Bearer {tokens.issue('7', 'admin', 'test-session')}"}
    async with client.session.get(shop["inventory"].make_url(f"/api/inventory/{sku}")) as got:
        etag = got.headers["ETag"]
    async with client.session.put(
        shop["inventory"].make_url(f"/api/inventory/{sku}"),
        json={"available": 5},
        headers={**admin, "If-Match": etag},
    ) as restocked:
        assert restocked.status == 200
    deadline = asyncio.get_running_loop().time() + 10
    while (status := (await attempt(client, latecomer, sku, 1))[0]) == 409:
        assert asyncio.get_running_loop().time() < deadline, "the restock was never heard"
        await asyncio.sleep(0.1)
    assert status == 201


async def eventually_refused(
    client: TestClient, shopper: dict[str, str], sku: str, timeout_s: float = 10
) -> dict[str, Any]:
    """The sold-out refusal, once the feed's level has reached the order service (an attempt
    before that is placed, and cancelled by the saga for want of stock)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        status, answer = await attempt(client, shopper, sku, 1)
        if status == 409:
            return answer
        assert status == 201 and asyncio.get_running_loop().time() < deadline, answer
        assert await settled(client, shopper, answer["id"]) == "cancelled"


async def test_a_declined_payment_gives_the_stock_back(shop, shopper, platform: DataTier) -> None:
    sku = await new_sku(platform, 4)
    order_id = await place(shop["order"], shopper, sku, 3, token="tok_declined")
    assert await settled(shop["order"], shopper, order_id) == "cancelled"
    assert await stock(shop, sku) == (4, 0)  # the reservation was released


def new_shopper(tokens: Tokens) -> dict[str, str]:
    """A shopper of their own: the fraud rules' velocity limit counts payments per user."""
    user_id = str(uuid.uuid4().int % 10**9 + 2 * 10**9)
    return {"Authorization": f"Bearer {tokens.issue(user_id, 'customer', 'saga-test')}"}


def captured_by(simulator: Any, order_ids: list[int]) -> set[int]:
    """The orders whose authorization this provider holds, each captured exactly once."""
    found = set()
    for payment in simulator.payments.values():
        for order_id in order_ids:
            if payment.idempotency_key == f"checkout-order-{order_id}:authorize":
                assert (payment.captures, payment.captured_cents) == (1, payment.amount_cents)
                found.add(order_id)
    return found


async def breaker_metrics(shop: dict[str, Any]) -> str:
    async with shop["order"].session.get(shop["payment"].make_url("/metrics")) as response:
        return await response.text()


async def test_checkouts_ride_out_a_failing_primary_provider(
    shop, tokens: Tokens, platform: DataTier
) -> None:
    """Stripe (the primary) answers 500s: checkouts still ship, paid through PayPal, Stripe's
    breaker opens and refuses calls; once Stripe recovers and the cooldown has passed, a trial
    call closes the breaker and checkouts are paid through Stripe again."""
    sku = await new_sku(platform, 100)
    order = shop["order"]

    async def checkout() -> tuple[int, str]:
        shopper = new_shopper(tokens)
        order_id = await place(order, shopper, sku, 1)
        return order_id, await settled(order, shopper, order_id)

    shop["stripe"].behaviour = Behaviour(mode="fail")
    outcomes = await asyncio.gather(*(checkout() for _ in range(8)))
    assert [status for _, status in outcomes] == ["shipped"] * 8
    during = [order_id for order_id, _ in outcomes]
    assert captured_by(shop["paypal"], during) == set(during)
    assert captured_by(shop["stripe"], during) == set()
    metrics = await breaker_metrics(shop)
    assert 'payment_attempts_total{provider="stripe",result="breaker_open"}' in metrics

    shop["stripe"].behaviour = Behaviour()
    await asyncio.sleep(BREAKER_COOLDOWN_S + 0.2)
    outcomes = [await checkout() for _ in range(3)]
    assert [status for _, status in outcomes] == ["shipped"] * 3
    after = [order_id for order_id, _ in outcomes]
    assert captured_by(shop["stripe"], after) == set(after)
    metrics = await breaker_metrics(shop)
    assert 'payment_breaker_state{provider="stripe"} 0.0' in metrics
    assert await stock(shop, sku) == (100 - len(during) - len(after), 0)


@pytest.mark.slow
async def test_a_flash_sale_sells_exactly_the_stock(
    shop, tokens: Tokens, platform: DataTier
) -> None:
    """2,000 shoppers at once for 100 units: exactly 100 orders end shipped, every other one is
    cancelled, stock ends at 0 and never below, each sale is captured exactly once, and the
    audit trail adds up to the final stock."""
    units, attempts = 100, 2000
    sku = await new_sku(platform, units)
    client = shop["order"]
    semaphore = asyncio.Semaphore(200)  # in flight at once, as a load balancer would admit

    async def one(n: int) -> tuple[int, dict[str, Any]]:
        shopper = {
            "Authorization": f"Bearer {tokens.issue(str(3 * 10**9 + n), 'customer', 'sale')}"
        }
        async with semaphore:
            return await attempt(client, shopper, sku, 1)

    answers = await asyncio.gather(*(one(n) for n in range(attempts)))
    # Placed, or refused at the door once the stock feed said the SKU was gone.
    assert {status for status, _ in answers} <= {201, 409}
    assert {a["error"] for status, a in answers if status == 409} <= {"sold_out"}
    ids = [answer["id"] for status, answer in answers if status == 201]
    assert len(ids) >= units
    connection = await asyncpg.connect(platform.postgres.primary_dsn)
    try:
        deadline = asyncio.get_running_loop().time() + 240
        while True:  # one query for every order, rather than 2,000 pollers
            rows = await connection.fetch("SELECT id, status FROM orders WHERE id = ANY($1)", ids)
            status_of = {r["id"]: r["status"] for r in rows}
            if all(s in ("shipped", "cancelled") for s in status_of.values()):
                break
            assert asyncio.get_running_loop().time() < deadline, "the saga did not finish"
            await asyncio.sleep(0.5)
    finally:
        await connection.close()
    statuses = [status_of[o] for o in ids]
    assert statuses.count("shipped") == units
    assert statuses.count("cancelled") == len(ids) - units
    assert await stock(shop, sku) == (0, 0)
    async with client.session.get(
        shop["inventory"].make_url(f"/api/inventory/{sku}/audit")
    ) as response:
        assert (await response.json())["consistent"] is True
    shipped = {o for o, status in zip(ids, statuses, strict=True) if status == "shipped"}
    captures = [
        p.captures
        for p in shop["stripe"].payments.values()
        if p.idempotency_key and int(p.idempotency_key.split(":")[0].rsplit("-", 1)[1]) in shipped
    ]
    assert sorted(captures) == [1] * units
