"""Fulfilment: a confirmed order is handed to the warehouse, once, and is `shipped` only when
the warehouse took it. On the real data tier with the order, inventory and payment services in
process and the shipped simulators (services.order.warehouse_simulator for the warehouse)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from services.kit import backends
from services.kit.auth import Tokens
from services.kit.metrics import Metrics
from services.kit.resilience import BreakerConfig, BreakerOpen, BreakerState, RetryPolicy
from services.kit.settings import Settings
from services.kit.simulator import Behaviour
from services.order.fulfilment import (
    AWAITING_SHIPMENT_AFTER_S,
    Refused,
    Warehouse,
    WarehouseUnavailable,
)
from services.order.orders import Orders
from services.order.warehouse_simulator import WarehouseSimulator
from stacks.local.data_tier import DataTier
from tests.services.test_checkout_saga import build_shop, new_shopper, place, settled
from tests.services.test_inventory_service import new_sku


@pytest.fixture
async def shop(aiohttp_server, aiohttp_client, settings_for, tmp_path: Path) -> dict[str, Any]:
    return await build_shop(aiohttp_server, aiohttp_client, settings_for, tmp_path)


@pytest.fixture
def shopper(tokens: Tokens) -> dict[str, str]:
    return new_shopper(tokens)


async def order_row(platform: DataTier, order_id: int) -> asyncpg.Record:
    connection = await asyncpg.connect(platform.postgres.primary_dsn)
    try:
        return await connection.fetchrow(
            "SELECT status, shipment_id, shipment_error FROM orders WHERE id = $1", order_id
        )
    finally:
        await connection.close()


async def status_for(platform: DataTier, order_id: int, wanted: str, timeout_s: float) -> str:
    """The order's status once it is `wanted`, or whatever it is after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        status = (await order_row(platform, order_id))["status"]
        if status == wanted or asyncio.get_running_loop().time() > deadline:
            return status
        await asyncio.sleep(0.1)


def shipments_of(warehouse: WarehouseSimulator, order_id: int) -> list[Any]:
    return [s for s in warehouse.shipments.values() if s.order_reference == f"order-{order_id}"]


def calls_for(warehouse: WarehouseSimulator, order_id: int) -> list[dict[str, Any]]:
    key = f"order-{order_id}-shipment"
    return [r for r in warehouse.requests if r["idempotency_key"] == key]


async def test_a_confirmed_order_is_handed_over_once_and_shipped_with_its_shipment(
    shop, shopper, platform: DataTier
) -> None:
    sku = await new_sku(platform, 10)
    order_id = await place(shop["order"], shopper, sku, 2)
    assert await settled(shop["order"], shopper, order_id) == "shipped"
    [shipment] = shipments_of(shop["warehouse"], order_id)
    assert shipment.lines == [{"sku": sku, "quantity": 2}]
    assert shipment.idempotency_key == f"order-{order_id}-shipment"
    # The shopper sees the warehouse's shipment with the order, and in the history.
    answer = await (await shop["order"].get(f"/api/orders/{order_id}", headers=shopper)).json()
    assert answer["shipment_id"] == shipment.id
    history = await (await shop["order"].get("/api/orders", headers=shopper)).json()
    assert [o["shipment_id"] for o in history if o["id"] == order_id] == [shipment.id]
    metrics = await (await shop["order"].get("/metrics")).text()
    assert 'warehouse_calls_total{result="success"} 1.0' in metrics
    assert "warehouse_breaker_state 0.0" in metrics


async def test_an_order_waits_confirmed_while_the_warehouse_is_down_then_ships_once(
    shop, shopper, platform: DataTier
) -> None:
    warehouse: WarehouseSimulator = shop["warehouse"]
    warehouse.behaviour = Behaviour(mode="fail")
    sku = await new_sku(platform, 10)
    order_id = await place(shop["order"], shopper, sku, 1)
    assert await status_for(platform, order_id, "confirmed", 60) == "confirmed"
    # Retried with backoff, every attempt with the same key, and never marked shipped.
    deadline = asyncio.get_running_loop().time() + 30
    while len(calls_for(warehouse, order_id)) < 3:
        assert asyncio.get_running_loop().time() < deadline, warehouse.requests
        await asyncio.sleep(0.1)
    assert (await order_row(platform, order_id))["status"] == "confirmed"
    assert {r["status"] for r in calls_for(warehouse, order_id)} == {500}
    # The warehouse is back: the pending event is redelivered and the order ships, once.
    warehouse.behaviour = Behaviour()
    assert await status_for(platform, order_id, "shipped", 60) == "shipped"
    assert len(shipments_of(warehouse, order_id)) == 1
    assert (await order_row(platform, order_id))["shipment_error"] is None


async def test_a_lost_answer_is_retried_with_the_same_key_and_ships_once(
    shop, shopper, platform: DataTier
) -> None:
    """The warehouse takes the order but its answer is lost (502): the retry with the same
    Idempotency-Key gets the first answer, not a second shipment."""
    warehouse: WarehouseSimulator = shop["warehouse"]
    warehouse.behaviour = Behaviour(mode="lost")
    sku = await new_sku(platform, 10)
    order_id = await place(shop["order"], shopper, sku, 1)
    assert await status_for(platform, order_id, "shipped", 60) == "shipped"
    [shipment] = shipments_of(warehouse, order_id)
    assert (await order_row(platform, order_id))["shipment_id"] == shipment.id
    assert [r["status"] for r in calls_for(warehouse, order_id)][:2] == [502, 201]


async def test_a_refused_order_stays_confirmed_with_the_reason_and_is_not_retried(
    shop, shopper, platform: DataTier, settings_for
) -> None:
    sku = await new_sku(platform, 10, prefix="SKU-UNSHIPPABLE-")
    order_id = await place(shop["order"], shopper, sku, 1)
    deadline = asyncio.get_running_loop().time() + 60
    while (row := await order_row(platform, order_id))["shipment_error"] is None:
        assert asyncio.get_running_loop().time() < deadline, row
        await asyncio.sleep(0.1)
    assert row["status"] == "confirmed" and row["shipment_id"] is None
    assert "unshippable" in row["shipment_error"] and sku in row["shipment_error"]
    await asyncio.sleep(1)
    assert len(calls_for(shop["warehouse"], order_id)) == 1  # a final answer: asked once
    metrics = await (await shop["order"].get("/metrics")).text()
    assert 'warehouse_calls_total{result="answered"} 1.0' in metrics
    # It counts as waiting for shipment (the alert's gauge, once past its age threshold).
    settings = settings_for(Settings, "order")
    database = backends.database(settings, Metrics("awaiting", process=False), pool_max=1)
    await database.start()
    try:
        orders = Orders(database)
        # This order counts at once, not yet past the threshold.
        assert await orders.awaiting_shipment(0) > await orders.awaiting_shipment(
            AWAITING_SHIPMENT_AFTER_S
        )
    finally:
        await database.close()


# --- the client on its own, against the simulator ---------------------------------------------


@pytest.fixture
async def warehouse_at(aiohttp_server) -> Any:
    simulator = WarehouseSimulator(api_key="k")
    server = await aiohttp_server(simulator.app())
    async with aiohttp.ClientSession() as http:
        yield simulator, lambda **kw: Warehouse(str(server.make_url("")), "k", http, **kw)


ORDER = {"id": 7, "items": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 500}]}


async def test_an_order_the_warehouse_already_has_is_taken_as_accepted(warehouse_at) -> None:
    simulator, client = warehouse_at
    first = await client().hand_over(ORDER)
    simulator.idempotency.clear()  # as if the first call's key had been another one
    assert await client().hand_over(ORDER) == first
    assert len(simulator.shipments) == 1


async def test_the_breaker_opens_on_a_failing_warehouse_and_a_wrong_key_is_not_a_refusal(
    warehouse_at,
) -> None:
    simulator, client = warehouse_at
    simulator.behaviour = Behaviour(mode="fail")
    warehouse = client(
        breaker=BreakerConfig(consecutive_failures=3, cooldown_s=60),
        retry=RetryPolicy(attempts=3, base_delay_s=0.01, max_delay_s=0.02),
    )
    with pytest.raises(WarehouseUnavailable):
        await warehouse.hand_over(ORDER)
    assert warehouse.guard.breaker.state is BreakerState.OPEN
    sent = len(simulator.requests)
    with pytest.raises(BreakerOpen):
        await warehouse.hand_over(ORDER)
    assert len(simulator.requests) == sent  # refused without calling
    simulator.behaviour = Behaviour()
    simulator.api_key = "rotated"
    with pytest.raises(WarehouseUnavailable, match="401"):
        await client(retry=RetryPolicy(attempts=1)).hand_over(ORDER)
    simulator.api_key = "k"
    with pytest.raises(Refused) as refused:
        await client().hand_over({"id": 8, "items": []})
    assert (refused.value.status, refused.value.code) == (422, "invalid_shipment")
