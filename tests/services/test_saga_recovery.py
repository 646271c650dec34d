"""A crash between saga steps: the order service's worker process (outbox relay, saga and
fulfilment consumers) is killed with SIGKILL while checkouts are in flight, twice, and
restarted. Afterwards every order is either completed (shipped, captured exactly once) or
fully compensated (cancelled, stock back, no authorization left open), and stock adds up.

The worker is the real `python -m services.order` process; the order API that takes the
orders runs in the test with RUN_WORKERS=false, as a separate API Deployment would."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from services.inventory.app import InventorySettings
from services.inventory.app import init_app as inventory_app
from services.kit.auth import Tokens
from services.order.app import OrderSettings
from services.order.app import init_app as order_app
from services.payment.simulators import Behaviour
from stacks.local.data_tier import DataTier
from stacks.local.ports import PortAllocator
from stacks.services import SERVICES
from tests.services.test_checkout_saga import (
    new_shopper,
    payment_with_simulators,
    place,
    stock,
    url,
    warehouse_simulator,
)
from tests.services.test_inventory_service import new_sku

# Four processes share the test data tier's 24 PgPool children: each keeps to 5 connections.
POOL = {"DATABASE_POOL_MAX": "5"}
UNFINISHED = ("pending", "stock_reserved", "paid", "confirmed")
FINISHED = ("shipped", "cancelled")


class Worker:
    """`python -m services.order` with its workers on, started and SIGKILLed at will."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.order"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ready = f"http://127.0.0.1:{self.env['PORT']}/readyz"
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                assert self.process.poll() is None, self.log.read_text()[-3000:]
                try:
                    async with session.get(ready) as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"the order worker never got ready:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """No drain, no cleanup: what a node failure or the OOM killer does."""
        assert self.process is not None and self.process.poll() is None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
async def crashable_shop(
    aiohttp_server, aiohttp_client, settings_for, platform: DataTier, tmp_path: Path
) -> AsyncIterator[dict[str, Any]]:
    stripe, paypal, payment = await payment_with_simulators(
        aiohttp_server, settings_for, tmp_path, **POOL
    )
    # Slow enough that a kill lands while payments are in flight.
    stripe.behaviour = Behaviour(mode="slow", delay_ms=300)
    inventory = await aiohttp_server(
        inventory_app(settings_for(InventorySettings, "inventory", **POOL))
    )
    warehouse, reach_warehouse = await warehouse_simulator(aiohttp_server, tmp_path)
    peers = {"INVENTORY_URL": url(inventory), "PAYMENT_URL": url(payment), **reach_warehouse}
    api = await aiohttp_client(
        order_app(settings_for(OrderSettings, "order", RUN_WORKERS="false", **peers, **POOL))
    )
    env = {
        **os.environ,
        **platform.service_environment(SERVICES["order"]),
        **peers,
        **POOL,
        "PORT": str(PortAllocator(None).take("order-worker")),
        "RUN_WORKERS": "true",
        "LOG_LEVEL": "warning",
    }
    worker = Worker(env, tmp_path / "order-worker.log")
    try:
        yield {
            "order": api,
            "inventory": inventory,
            "stripe": stripe,
            "paypal": paypal,
            "warehouse": warehouse,
            "worker": worker,
        }
    finally:
        if worker.process is not None and worker.process.poll() is None:
            worker.kill()


async def statuses(platform: DataTier, ids: list[int]) -> dict[int, str]:
    connection = await asyncpg.connect(platform.postgres.primary_dsn)
    try:
        rows = await connection.fetch("SELECT id, status FROM orders WHERE id = ANY($1)", ids)
    finally:
        await connection.close()
    return {r["id"]: r["status"] for r in rows}


async def until(platform: DataTier, ids: list[int], done: Any, timeout_s: float) -> dict[int, str]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        now = await statuses(platform, ids)
        if done(now) or asyncio.get_running_loop().time() > deadline:
            return now
        await asyncio.sleep(0.1)


def payments_of(simulators: list[Any], order_id: int) -> list[Any]:
    key = f"checkout-order-{order_id}:authorize"
    return [p for sim in simulators for p in sim.payments.values() if p.idempotency_key == key]


async def test_killing_the_worker_between_saga_steps_loses_and_doubles_nothing(
    crashable_shop: dict[str, Any], tokens: Tokens, platform: DataTier
) -> None:
    shop, worker = crashable_shop, crashable_shop["worker"]
    units = 12
    scarce = await new_sku(platform, units)  # more orders than units: some must be refused
    plenty = await new_sku(platform, 100)
    await worker.start()

    async def order(sku: str, token: str = "tok_visa") -> int:
        return await place(shop["order"], new_shopper(tokens), sku, 1, token=token)

    ids = await asyncio.gather(
        *(order(scarce) for _ in range(20)),
        *(order(plenty) for _ in range(10)),
        *(order(plenty, "tok_declined") for _ in range(5)),
    )
    ids = list(ids)

    # Kill it once some orders are mid-saga (stock held, payment under way)...
    mid = await until(
        platform, ids, lambda s: sum(v in ("stock_reserved", "paid") for v in s.values()) >= 5, 30
    )
    worker.kill()
    at_first_kill = await statuses(platform, ids)
    assert any(s in UNFINISHED for s in at_first_kill.values()), mid
    # ...restart it, and kill it again as soon as it has moved something on.
    await worker.start()
    await until(platform, ids, lambda s: s != at_first_kill, 30)
    worker.kill()
    at_second_kill = await statuses(platform, ids)
    assert any(s in UNFINISHED for s in at_second_kill.values()), at_second_kill

    await worker.start()
    final = await until(platform, ids, lambda s: all(v in FINISHED for v in s.values()), 90)
    assert set(final.values()) <= set(FINISHED), final

    providers = [shop["stripe"], shop["paypal"]]
    for order_id, status in final.items():
        payments = payments_of(providers, order_id)
        if status == "shipped":  # completed: one authorization, captured exactly once
            assert [(p.status, p.captures) for p in payments] == [("captured", 1)], order_id
        else:  # compensated: nothing captured, no authorization left holding money
            assert all(p.captures == 0 and p.status != "authorized" for p in payments), order_id

    # The warehouse got each shipped order once, whatever the crashes repeated, and no other.
    # (The worker's consumer group is the platform's: it may finish earlier tests' orders too.)
    ours = {f"order-{i}": status for i, status in final.items()}
    handed = [s.order_reference for s in shop["warehouse"].shipments.values()]
    assert sorted(r for r in handed if r in ours) == sorted(
        r for r, status in ours.items() if status == "shipped"
    )

    shipped_scarce = sum(final[i] == "shipped" for i in ids[:20])
    assert shipped_scarce == units  # every unit sold once the dust settles
    assert [final[i] for i in ids[20:30]] == ["shipped"] * 10
    assert [final[i] for i in ids[30:]] == ["cancelled"] * 5
    assert await stock(shop, scarce) == (0, 0)
    assert await stock(shop, plenty) == (90, 0)
    for sku in (scarce, plenty):
        async with shop["order"].session.get(
            shop["inventory"].make_url(f"/api/inventory/{sku}/audit")
        ) as response:
            assert (await response.json())["consistent"] is True
