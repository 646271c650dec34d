"""The order service against the real data tier: carts that survive losing Redis, orders placed
once per Idempotency-Key (even by concurrent twins), priced from the catalog, history, bad input."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio.cluster import ClusterNode, RedisCluster

from services.kit.auth import Tokens
from services.kit.exports import CARTS_CHECKED_OUT, CARTS_STARTED
from services.kit.redis import RedisStore
from services.kit.settings import HostPort
from services.order.app import OrderSettings, init_app
from services.order.carts import MAX_LINES
from services.order.soldout import SoldOut
from stacks.local.data_tier import DataTier


@pytest.fixture
async def client(aiohttp_client, settings_for) -> TestClient:
    return await aiohttp_client(init_app(settings_for(OrderSettings, "order", RUN_WORKERS="false")))


@pytest.fixture
def shopper(tokens: Tokens) -> dict[str, str]:
    """A fresh shopper's bearer header (a user id no other test uses)."""
    user_id = str(uuid.uuid4().int % 10**9 + 10**6)
    return {"Authorization": f"Bearer {tokens.issue(user_id, 'customer', 'test-session')}"}


async def prices(platform: DataTier, *skus: str) -> dict[str, int]:
    connection = await asyncpg.connect(platform.postgres.primary_dsn)
    try:
        rows = await connection.fetch(
            "SELECT sku, price_cents FROM products WHERE sku = ANY($1)", list(skus)
        )
    finally:
        await connection.close()
    return {r["sku"]: r["price_cents"] for r in rows}


def key() -> dict[str, str]:
    return {"Idempotency-Key": f"checkout-{uuid.uuid4().hex}"}


async def test_the_cart_is_written_through_and_survives_losing_redis(
    client: TestClient, shopper: dict[str, str], platform: DataTier, tokens: Tokens
) -> None:
    put = await client.put(
        "/api/orders/cart/items", json={"sku": "SKU-000001", "quantity": 2}, headers=shopper
    )
    assert put.status == 200 and (await put.json())["items"] == {"SKU-000001": 2}
    await client.put(
        "/api/orders/cart/items", json={"sku": "SKU-000002", "quantity": 1}, headers=shopper
    )
    await client.put(
        "/api/orders/cart/items", json={"sku": "SKU-000001", "quantity": 0}, headers=shopper
    )
    redis = RedisCluster(
        startup_nodes=[ClusterNode(*n.rsplit(":", 1)) for n in platform.redis.nodes],
        password=platform.redis.password,
    )
    try:
        user_id = tokens.verify(shopper["Authorization"].split()[1]).user_id
        ttl = await redis.ttl(f"cart:{{{user_id}}}")
        assert 7 * 24 * 3600 - 60 < ttl <= 7 * 24 * 3600
        await redis.delete(f"cart:{{{user_id}}}")  # Redis loses the cart
    finally:
        await redis.aclose()
    again = await client.get("/api/orders/cart", headers=shopper)
    assert (await again.json())["items"] == {"SKU-000002": 1}


async def test_a_full_cart_takes_no_new_line_but_changes_its_own(
    client: TestClient, shopper: dict[str, str]
) -> None:
    async def put(sku: str, quantity: int) -> tuple[int, dict[str, Any]]:
        response = await client.put(
            "/api/orders/cart/items", json={"sku": sku, "quantity": quantity}, headers=shopper
        )
        return response.status, await response.json()

    lines = await asyncio.gather(*(put(f"SKU-{n:06d}", 1) for n in range(MAX_LINES)))
    assert {status for status, _ in lines} == {200}  # concurrent: none lost to a race
    status, body = await put(f"SKU-{MAX_LINES:06d}", 1)
    assert status == 422 and [f["field"] for f in body["fields"]] == ["body.sku"]
    assert (await put("SKU-000007", 5))[1]["items"]["SKU-000007"] == 5
    status, body = await put("SKU-000007", 0)
    assert status == 200 and len(body["items"]) == MAX_LINES - 1
    status, body = await put(f"SKU-{MAX_LINES:06d}", 1)  # room again
    assert status == 200 and len(body["items"]) == MAX_LINES
    cart = await (await client.get("/api/orders/cart", headers=shopper)).json()
    assert cart["items"] == body["items"]


async def test_an_order_is_priced_from_the_catalog_and_starts_its_saga(
    client: TestClient, shopper: dict[str, str], platform: DataTier
) -> None:
    catalog = await prices(platform, "SKU-000003", "SKU-000004")
    body = {
        "items": [{"sku": "SKU-000003", "quantity": 2}, {"sku": "SKU-000004", "quantity": 1}],
        "payment_token": "tok_visa",
    }
    response = await client.post("/api/orders", json=body, headers={**shopper, **key()})
    assert response.status == 201
    order = await response.json()
    assert order["status"] == "pending"
    assert order["total_cents"] == 2 * catalog["SKU-000003"] + catalog["SKU-000004"]
    assert {i["sku"]: i["unit_price_cents"] for i in order["items"]} == catalog
    connection = await asyncpg.connect(platform.postgres.primary_dsn)
    try:
        event = await connection.fetchval(
            "SELECT count(*) FROM outbox WHERE topic = 'order.placed' AND key = $1",
            str(order["id"]),
        )
        assert event == 1  # written in the same transaction as the order
    finally:
        await connection.close()
    fetched = await client.get(f"/api/orders/{order['id']}", headers=shopper)
    assert (await fetched.json())["id"] == order["id"]


async def test_the_same_key_places_one_order_even_from_concurrent_twins(
    client: TestClient, shopper: dict[str, str], platform: DataTier
) -> None:
    body = {"items": [{"sku": "SKU-000005", "quantity": 1}], "payment_token": "tok_visa"}
    twin = {**shopper, **key()}
    responses = await asyncio.gather(
        *(client.post("/api/orders", json=body, headers=twin) for _ in range(8))
    )
    orders = [await r.json() for r in responses]
    assert sorted(r.status for r in responses) == [200] * 7 + [201]
    assert len({o["id"] for o in orders}) == 1
    history = await (await client.get("/api/orders", headers=shopper)).json()
    assert [o["id"] for o in history] == [orders[0]["id"]]
    reused = await client.post(
        "/api/orders",
        json={"items": [{"sku": "SKU-000006", "quantity": 1}], "payment_token": "tok_visa"},
        headers=twin,
    )
    assert reused.status == 409


async def test_checking_out_the_cart_empties_it(
    client: TestClient, shopper: dict[str, str]
) -> None:
    await client.put(
        "/api/orders/cart/items", json={"sku": "SKU-000007", "quantity": 3}, headers=shopper
    )
    response = await client.post(
        "/api/orders", json={"payment_token": "tok_visa"}, headers={**shopper, **key()}
    )
    assert response.status == 201
    assert [(i["sku"], i["quantity"]) for i in (await response.json())["items"]] == [
        ("SKU-000007", 3)
    ]
    assert (await (await client.get("/api/orders/cart", headers=shopper)).json())["items"] == {}


async def test_carts_begun_and_checked_out_are_counted_for_abandonment(
    client: TestClient, shopper: dict[str, str]
) -> None:
    """A cart begins with a line put into an empty cart, and is checked out by an order placed
    from it (a retry of that order, or an order of listed items, is not another)."""

    async def counted() -> tuple[float, float]:
        text = await (await client.get("/metrics")).text()
        values = {
            s.name: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        return values[CARTS_STARTED], values[CARTS_CHECKED_OUT]

    async def put(sku: str, quantity: int, status: int = 200) -> None:
        line = {"sku": sku, "quantity": quantity}
        response = await client.put("/api/orders/cart/items", json=line, headers=shopper)
        assert response.status == status, await response.text()

    assert await counted() == (0, 0)
    await put("SKU-NOT-SOLD", 1, status=422)
    assert await counted() == (0, 0), "a refused line begins nothing"
    await put("SKU-000031", 1)
    await put("SKU-000032", 2)
    await put("SKU-000031", 4)
    assert await counted() == (1, 0)
    await put("SKU-000031", 0)
    await put("SKU-000032", 0)
    await put("SKU-000033", 1)
    assert await counted() == (2, 0), "emptied, then begun again"
    twin = {**shopper, **key()}
    for status in (201, 200):  # the order, then its retry
        placed = await client.post("/api/orders", json={"payment_token": "tok_visa"}, headers=twin)
        assert placed.status == status, await placed.text()
    listed = {"payment_token": "tok_visa", "items": [{"sku": "SKU-000034", "quantity": 1}]}
    placed = await client.post("/api/orders", json=listed, headers={**shopper, **key()})
    assert placed.status == 201, await placed.text()
    assert await counted() == (2, 1)


async def test_history_is_newest_first_and_pages(
    client: TestClient, shopper: dict[str, str]
) -> None:
    ids = []
    for n in range(3):
        body = {"items": [{"sku": f"SKU-00001{n}", "quantity": 1}], "payment_token": "tok_visa"}
        ids.append(
            (
                await (
                    await client.post("/api/orders", json=body, headers={**shopper, **key()})
                ).json()
            )["id"]
        )
    first = await (await client.get("/api/orders", params={"limit": "2"}, headers=shopper)).json()
    assert [o["id"] for o in first] == ids[::-1][:2]
    rest = await (
        await client.get("/api/orders", params={"before": first[-1]["created_at"]}, headers=shopper)
    ).json()
    assert [o["id"] for o in rest] == [ids[0]]


@pytest.mark.parametrize(
    ("body", "headers", "field"),
    [
        (
            {"items": [{"sku": "SKU-000001", "quantity": 1}], "payment_token": "tok_visa"},
            {},
            "header.Idempotency-Key",
        ),
        (
            {"items": [{"sku": "SKU-000001", "quantity": 1}], "payment_token": "tok_visa"},
            {"Idempotency-Key": "short"},
            "header.Idempotency-Key",
        ),
        (
            {"items": [{"sku": "SKU-NOPE", "quantity": 1}], "payment_token": "tok_visa"},
            None,
            "body.items",
        ),
        (
            {"items": [{"sku": "SKU-000001", "quantity": 101}], "payment_token": "tok_visa"},
            None,
            "body.items.0.quantity",
        ),
        ({"items": [], "payment_token": "tok_visa"}, None, "body.items"),
        ({"payment_token": "tok_visa"}, None, "body.items"),  # an empty cart
        (
            {"items": [{"sku": "SKU-000001", "quantity": 1}], "payment_token": "4242424242424242"},
            None,
            "body.payment_token",
        ),
    ],
)
async def test_bad_orders_name_the_field_and_write_nothing(
    client: TestClient,
    shopper: dict[str, str],
    body: dict[str, Any],
    headers: dict[str, str] | None,
    field: str,
) -> None:
    response = await client.post(
        "/api/orders", json=body, headers={**shopper, **(key() if headers is None else headers)}
    )
    assert response.status == 422
    assert field in [f["field"] for f in (await response.json())["fields"]]
    assert await (await client.get("/api/orders", headers=shopper)).json() == []


@pytest.mark.parametrize(
    "before",
    [
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC: asyncpg's conversion overflowed
        "9999-12-31T23:59:59-01:00",  # after 9999 in UTC
        "1969-12-31T23:59:59Z",
        "2024-01-01T00:00:00",  # no UTC offset: the server's zone would decide
        "2024-01-01",
    ],
)
async def test_history_refuses_a_time_it_cannot_compare(
    client: TestClient, shopper: dict[str, str], before: str
) -> None:
    """Issue 20: these answered 500 (asyncpg's OverflowError, or a silent server-zone guess)."""
    response = await client.get("/api/orders", params={"before": before}, headers=shopper)
    assert response.status == 422, await response.text()
    assert [f["field"] for f in (await response.json())["fields"]] == ["query.before"]


async def test_the_cart_takes_only_skus_the_catalog_sells(
    client: TestClient, shopper: dict[str, str]
) -> None:
    """Issue 20: an unknown SKU was accepted, and checkout failed until it was removed."""
    response = await client.put(
        "/api/orders/cart/items", json={"sku": "SKU-NOPE", "quantity": 1}, headers=shopper
    )
    assert response.status == 422
    assert [f["field"] for f in (await response.json())["fields"]] == ["body.sku"]
    assert (await (await client.get("/api/orders/cart", headers=shopper)).json())["items"] == {}
    # Removing a line is always allowed (a product withdrawn after it was added).
    removed = await client.put(
        "/api/orders/cart/items", json={"sku": "SKU-NOPE", "quantity": 0}, headers=shopper
    )
    assert removed.status == 200 and (await removed.json())["items"] == {}


async def test_an_order_lists_each_sku_once(client: TestClient, shopper: dict[str, str]) -> None:
    """Issue 20: the same SKU twice collapsed silently into one line (the last quantity)."""
    body = {
        "items": [{"sku": "SKU-000001", "quantity": 1}, {"sku": "SKU-000001", "quantity": 2}],
        "payment_token": "tok_visa",
    }
    response = await client.post("/api/orders", json=body, headers={**shopper, **key()})
    assert response.status == 422
    error = await response.json()
    assert [f["field"] for f in error["fields"]] == ["body.items"]
    assert "SKU-000001" in error["fields"][0]["problem"]
    assert await (await client.get("/api/orders", headers=shopper)).json() == []


async def test_a_reused_key_must_repeat_the_whole_request(
    client: TestClient, shopper: dict[str, str]
) -> None:
    """Issue 20: the same key with the same items but another payment token answered the first
    order as if the token had been taken."""
    items = [{"sku": "SKU-000020", "quantity": 1}]
    twin = {**shopper, **key()}
    first = await client.post(
        "/api/orders", json={"items": items, "payment_token": "tok_visa"}, headers=twin
    )
    assert first.status == 201
    again = await client.post(
        "/api/orders", json={"items": items, "payment_token": "tok_visa"}, headers=twin
    )
    assert again.status == 200 and (await again.json())["id"] == (await first.json())["id"]
    other = await client.post(
        "/api/orders", json={"items": items, "payment_token": "tok_mastercard"}, headers=twin
    )
    assert other.status == 409
    error = await other.json()
    assert error["error"] == "conflict" and "payment_token" in error["message"]
    assert "items" not in error["message"]
    # Checking out the cart is another request than listing the same items.
    cart = await client.post("/api/orders", json={"payment_token": "tok_visa"}, headers=twin)
    assert cart.status == 409 and "items" in (await cart.json())["message"]
    assert len(await (await client.get("/api/orders", headers=shopper)).json()) == 1


async def test_a_retried_cart_checkout_gets_its_order(
    client: TestClient, shopper: dict[str, str]
) -> None:
    """The cart is emptied by the first attempt: the retry is still the same request."""
    await client.put(
        "/api/orders/cart/items", json={"sku": "SKU-000021", "quantity": 2}, headers=shopper
    )
    twin = {**shopper, **key()}
    first = await client.post("/api/orders", json={"payment_token": "tok_visa"}, headers=twin)
    assert first.status == 201
    retry = await client.post("/api/orders", json={"payment_token": "tok_visa"}, headers=twin)
    assert retry.status == 200, await retry.text()
    assert (await retry.json())["id"] == (await first.json())["id"]
    # Without a key that placed an order, an empty cart is still nothing to order.
    empty = await client.post(
        "/api/orders", json={"payment_token": "tok_visa"}, headers={**shopper, **key()}
    )
    assert empty.status == 422


async def test_orders_need_a_shopper(client: TestClient) -> None:
    assert (await client.get("/api/orders")).status == 401
    assert (await client.post("/api/orders", json={}, headers=key())).status == 401


def test_the_sold_out_hint_only_refuses_while_it_is_fresh_and_true() -> None:
    """A SKU is sold out while its last level has nothing available, for at most the hint's
    lifetime; a level with stock, or a new subscription (levels may have been missed), clears
    it. The check costs no I/O: the flash sale's late attempts are refused by it."""
    hint = SoldOut(RedisStore([HostPort("127.0.0.1", 1)], None), ttl_s=0.2)
    hint.heard({"sku": "SKU-A", "available": 0, "reserved": 3, "version": 7})
    hint.heard({"sku": "SKU-B", "available": 2, "reserved": 0, "version": 4})
    assert hint.among(["SKU-B", "SKU-A", "SKU-C"]) == ["SKU-A"]
    hint.heard({"sku": "SKU-A", "available": 1, "reserved": 2, "version": 8})  # one released
    assert hint.among(["SKU-A"]) == []
    hint.heard({"sku": "SKU-A", "available": 0, "reserved": 3, "version": 9})
    time.sleep(0.25)
    assert hint.among(["SKU-A"]) == []  # too old to trust
    hint.heard({"sku": "SKU-A", "available": 0, "reserved": 3, "version": 10})
    hint.resubscribed()
    assert hint.among(["SKU-A"]) == []
