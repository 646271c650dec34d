"""The inventory service against the real data tier: no oversell under concurrency, idempotent
reservations, expiry, optimistic locking, the audit trail, the live feed and bad input."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from services.inventory.app import InventorySettings, init_app
from services.inventory.views import STOCK
from services.kit.auth import Tokens
from services.kit.exports import INVENTORY_UNITS_ON_HAND, INVENTORY_UNITS_SOLD
from stacks.local.data_tier import DataTier


@pytest.fixture
async def client(aiohttp_client, settings_for) -> TestClient:
    settings = settings_for(InventorySettings, "inventory", RESERVATION_SWEEP_SECONDS="1")
    return await aiohttp_client(init_app(settings))


def as_role(tokens: Tokens, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.issue('7', role, 'test-session')}"}


async def new_sku(
    platform: DataTier, available: int, threshold: int = 10, prefix: str = "SKU-I"
) -> str:
    """A product with stock, recorded as its first event (as the seed does)."""
    sku = f"{prefix}{uuid.uuid4().hex[:8].upper()}"
    connection = await asyncpg.connect(platform.postgres.primary_dsn)
    try:
        async with connection.transaction():
            await connection.execute(
                """INSERT INTO products (sku, name, category_id, price_cents)
                   SELECT $1, 'Test item', id, 500 FROM categories WHERE slug = 'kitchen'""",
                sku,
            )
            await connection.execute(
                "INSERT INTO inventory (sku, available, low_stock_threshold) VALUES ($1, $2, $3)",
                sku,
                available,
                threshold,
            )
            await connection.execute(
                """INSERT INTO inventory_events (sku, kind, delta, available_after, reference)
                   VALUES ($1, 'stocked', $2, $2, 'test')""",
                sku,
                available,
            )
    finally:
        await connection.close()
    return sku


def reservation(order_id: int, sku: str, quantity: int = 1) -> dict[str, Any]:
    return {"order_id": order_id, "items": [{"sku": sku, "quantity": quantity}]}


def order_id() -> int:
    return uuid.uuid4().int % 10**12 + 1


async def level(client: TestClient, sku: str) -> dict[str, Any]:
    response = await client.get(f"/api/inventory/{sku}")
    assert response.status == 200
    return await response.json()


async def audit(client: TestClient, sku: str) -> dict[str, Any]:
    return await (await client.get(f"/api/inventory/{sku}/audit")).json()


async def exported(client: TestClient, name: str) -> float:
    text = await (await client.get("/metrics")).text()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return values[name]


async def test_concurrent_reservations_never_oversell(
    client: TestClient, tokens: Tokens, platform: DataTier
) -> None:
    sku = await new_sku(platform, available=40)
    service = as_role(tokens, "service")

    async def attempt() -> int:
        response = await client.post(
            "/api/inventory/reservations", json=reservation(order_id(), sku), headers=service
        )
        return response.status

    statuses = await asyncio.gather(*(attempt() for _ in range(150)))
    assert statuses.count(201) == 40 and statuses.count(409) == 110
    stock = await level(client, sku)
    assert (stock["available"], stock["reserved"]) == (0, 40)
    assert await audit(client, sku) == {
        "sku": sku,
        "available": 0,
        "rebuilt_from_events": 0,
        "consistent": True,
    }


async def test_reservations_are_all_or_nothing_and_idempotent(
    client: TestClient, tokens: Tokens, platform: DataTier
) -> None:
    plenty, scarce = await new_sku(platform, 10), await new_sku(platform, 1)
    service = as_role(tokens, "service")
    order = order_id()
    both = {
        "order_id": order,
        "items": [{"sku": plenty, "quantity": 2}, {"sku": scarce, "quantity": 2}],
    }
    refused = await client.post("/api/inventory/reservations", json=both, headers=service)
    assert refused.status == 409 and scarce in (await refused.json())["message"]
    assert (await level(client, plenty))["available"] == 10  # nothing was held

    once = await client.post(
        "/api/inventory/reservations", json=reservation(order, plenty, 3), headers=service
    )
    twice = await client.post(
        "/api/inventory/reservations", json=reservation(order, plenty, 3), headers=service
    )
    assert once.status == twice.status == 201
    assert await once.json() == await twice.json()  # the same reservation, held once
    assert (await level(client, plenty))["available"] == 7


async def test_commit_and_release_settle_once(
    client: TestClient, tokens: Tokens, platform: DataTier
) -> None:
    sku = await new_sku(platform, 10)
    service = as_role(tokens, "service")
    paid, abandoned = order_id(), order_id()
    for order in (paid, abandoned):
        assert (
            await client.post(
                "/api/inventory/reservations", json=reservation(order, sku, 2), headers=service
            )
        ).status == 201
    for _ in range(2):
        assert (
            await client.post(f"/api/inventory/reservations/{paid}/commit", headers=service)
        ).status == 204
        assert (
            await client.post(f"/api/inventory/reservations/{abandoned}/release", headers=service)
        ).status == 204
    stock = await level(client, sku)
    assert (stock["available"], stock["reserved"]) == (8, 0)
    assert await exported(client, INVENTORY_UNITS_SOLD) == 2, "sold once, released not sold"
    assert (await audit(client, sku))["consistent"] is True
    trail = f"/api/inventory/{sku}/events"
    assert (await client.get(trail)).status == 401  # it names orders and admins
    assert (await client.get(trail, headers=as_role(tokens, "customer"))).status == 403
    kinds = [
        e["kind"] for e in await (await client.get(trail, headers=as_role(tokens, "admin"))).json()
    ]
    assert sorted(kinds) == ["released", "reserved", "reserved", "sold", "stocked"]


async def test_the_units_on_hand_are_exported_for_the_turnover(
    aiohttp_client, settings_for, platform: DataTier
) -> None:
    """Every unit in stock, free or reserved, refreshed in the background."""
    settings = settings_for(InventorySettings, "inventory", ON_HAND_REFRESH_SECONDS="5")
    client = await aiohttp_client(init_app(settings))
    await new_sku(platform, 1000)
    connection = await asyncpg.connect(platform.postgres.primary_dsn)
    try:
        total = await connection.fetchval("SELECT sum(available + reserved) FROM inventory")
    finally:
        await connection.close()
    deadline = time.monotonic() + 20
    while (seen := await exported(client, INVENTORY_UNITS_ON_HAND)) != total:
        assert time.monotonic() < deadline, f"{INVENTORY_UNITS_ON_HAND} is {seen}, not {total}"
        await asyncio.sleep(0.5)


async def test_expired_reservations_go_back_on_the_shelf(
    client: TestClient, platform: DataTier
) -> None:
    sku = await new_sku(platform, 5)
    stock = client.app[STOCK]
    await stock.reserve(order_id(), [(sku, 3)], timedelta(milliseconds=200))
    assert (await level(client, sku))["available"] == 2
    for _ in range(40):  # the sweeper runs every second
        if (await level(client, sku))["available"] == 5:
            break
        await asyncio.sleep(0.1)
    assert (await level(client, sku))["available"] == 5
    assert (await audit(client, sku))["consistent"] is True


async def test_admin_edits_use_optimistic_locking(
    client: TestClient, tokens: Tokens, platform: DataTier
) -> None:
    sku = await new_sku(platform, 5)
    admin = as_role(tokens, "admin")
    read = await client.get(f"/api/inventory/{sku}")
    etag = read.headers["ETag"]
    assert (
        await client.put(f"/api/inventory/{sku}", json={"available": 9}, headers=admin)
    ).status == 428
    customer = {**as_role(tokens, "customer"), "If-Match": etag}
    assert (
        await client.put(f"/api/inventory/{sku}", json={"available": 9}, headers=customer)
    ).status == 403
    first = await client.put(
        f"/api/inventory/{sku}", json={"available": 9}, headers={**admin, "If-Match": etag}
    )
    assert first.status == 200 and first.headers["ETag"] != etag
    stale = await client.put(
        f"/api/inventory/{sku}", json={"available": 1}, headers={**admin, "If-Match": etag}
    )
    assert stale.status == 412
    assert (await level(client, sku))["available"] == 9
    assert (await audit(client, sku))["consistent"] is True


async def test_low_stock_raises_an_alert_event(
    client: TestClient, tokens: Tokens, platform: DataTier
) -> None:
    sku = await new_sku(platform, 12, threshold=10)
    service = as_role(tokens, "service")
    await client.post(
        "/api/inventory/reservations", json=reservation(order_id(), sku, 1), headers=service
    )
    connection = await asyncpg.connect(platform.postgres.primary_dsn)
    try:
        assert (
            await connection.fetchval(
                "SELECT count(*) FROM outbox WHERE topic = 'inventory.low_stock' AND key = $1", sku
            )
            == 0
        )
        await client.post(
            "/api/inventory/reservations", json=reservation(order_id(), sku, 2), headers=service
        )
        payload = await connection.fetchval(
            "SELECT payload FROM outbox WHERE topic = 'inventory.low_stock' AND key = $1", sku
        )
        assert json.loads(payload) == {"sku": sku, "available": 9, "threshold": 10}
    finally:
        await connection.close()


async def test_the_live_feed_streams_stock_changes(
    client: TestClient, tokens: Tokens, platform: DataTier
) -> None:
    sku = await new_sku(platform, 6)
    feed = await client.get("/api/inventory/feed", params={"sku": sku})
    assert feed.status == 200 and feed.headers["Content-Type"].startswith("text/event-stream")
    assert (await feed.content.readline()).startswith(b"retry: ")  # the reconnect hint
    assert (await feed.content.readline()) == b": connected\n"
    await asyncio.sleep(0.3)  # the instance's subscription is listening
    service = as_role(tokens, "service")
    await client.post(
        "/api/inventory/reservations", json=reservation(order_id(), sku, 2), headers=service
    )

    async def next_event() -> dict[str, Any]:
        while True:
            line = await feed.content.readline()
            if line.startswith(b"data: "):
                return json.loads(line[6:])

    update = await asyncio.wait_for(next_event(), timeout=5)
    assert (update["sku"], update["available"], update["reserved"]) == (sku, 4, 2)
    feed.close()


async def test_a_feed_ends_after_its_lifetime_and_tells_the_client_when_to_come_back(
    aiohttp_client, settings_for
) -> None:
    """A stream is not pinned to one process for ever: it ends, and EventSource reconnects
    after the `retry:` hint."""
    settings = settings_for(InventorySettings, "inventory", FEED_LIFETIME_SECONDS="1")
    client = await aiohttp_client(init_app(settings))
    started = time.monotonic()
    feed = await client.get("/api/inventory/feed")
    body = await asyncio.wait_for(feed.read(), timeout=10)  # ends: the server closed it
    assert 1 <= time.monotonic() - started < 5
    assert body.startswith(b"retry: 2000\n: connected\n\n")


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"order_id": 987_654_321_987, "items": []}, 422, "body.items"),
        (
            {"order_id": 987_654_321_987, "items": [{"sku": "SKU-X", "quantity": 0}]},
            422,
            "body.items.0.quantity",
        ),
        ({"order_id": 0, "items": [{"sku": "SKU-X", "quantity": 1}]}, 422, "body.order_id"),
        (
            {"order_id": 987_654_321_987, "items": [{"sku": "bad sku", "quantity": 1}]},
            422,
            "body.items.0.sku",
        ),
        (
            {"order_id": 987_654_321_987, "items": [{"sku": "SKU-NOSUCHTHING", "quantity": 1}]},
            422,
            "body.items",
        ),
    ],
)
async def test_bad_reservations_name_the_field(
    client: TestClient, tokens: Tokens, body: dict[str, Any], status: int, field: str
) -> None:
    response = await client.post(
        "/api/inventory/reservations", json=body, headers=as_role(tokens, "service")
    )
    assert response.status == status
    assert field in [f["field"] for f in (await response.json())["fields"]]


async def test_reservations_need_a_service_identity(client: TestClient, tokens: Tokens) -> None:
    body = reservation(1, "SKU-000001")
    assert (await client.post("/api/inventory/reservations", json=body)).status == 401
    assert (
        await client.post(
            "/api/inventory/reservations", json=body, headers=as_role(tokens, "customer")
        )
    ).status == 403
    assert (await client.get("/api/inventory/not-a-sku")).status == 404


async def test_a_request_that_waits_too_long_for_a_connection_gets_503_database_busy(
    aiohttp_client, settings_for, platform: DataTier
) -> None:
    """The process's only pooled connection is held: a request waits the acquire timeout,
    then answers 503 JSON `database_busy` with Retry-After, instead of hanging."""
    settings = settings_for(
        InventorySettings,
        "inventory",
        DATABASE_POOL_MAX="1",
        DATABASE_ACQUIRE_TIMEOUT_SECONDS="0.5",
    )
    client = await aiohttp_client(init_app(settings))
    sku = await new_sku(platform, 3)
    async with client.app[STOCK].db.transaction():  # holds the one connection
        started = time.monotonic()
        response = await client.get(f"/api/inventory/{sku}")
        waited = time.monotonic() - started
        body = await response.json()
    assert response.status == 503 and response.headers["Retry-After"] == "1"
    assert body["error"] == "database_busy"
    assert 0.5 <= waited < 5
    assert (await level(client, sku))["available"] == 3  # and once free, it answers
