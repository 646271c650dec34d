"""The fraud rules against the session's real Redis cluster: the amount limit, the velocity
window shared by every replica (a sliding window, atomic across processes), and what a charge
gets when Redis cannot answer."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from services.kit.auth import Tokens
from services.kit.cache import client
from services.kit.exports import PAYMENT_VELOCITY_UNAVAILABLE
from services.kit.settings import HostPort
from services.payment.app import PaymentSettings, init_app
from services.payment.fraud import (
    FraudRules,
    RedisVelocityStore,
    VelocityUnavailable,
)
from services.payment.simulators import DEFAULT_CREDENTIALS, build
from services.payment.views import FRAUD
from stacks.local.data_tier import DataTier

WINDOW_S = 60.0


def _nodes(data_tier: DataTier) -> list[HostPort]:
    return [HostPort(h, int(p)) for h, p in (n.rsplit(":", 1) for n in data_tier.redis.nodes)]


@pytest.fixture
async def redis_clients(data_tier: DataTier) -> AsyncIterator[list[RedisCluster | Redis]]:
    """Two cluster clients, as two replicas of the service have, started as the service starts
    its own (`RedisStore.start`): redis-py 8.1 can fail a fresh cluster client's concurrent
    first commands (AttributeError on a connection it is still setting up)."""
    made = [client(_nodes(data_tier), data_tier.redis.password) for _ in range(2)]
    for each in made:
        await each.ping()
    yield made
    for each in made:
        await each.aclose()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


def payment() -> str:
    return str(uuid.uuid4())


def rules_on(redis: RedisCluster | Redis, clock: Callable[[], float] = time.time, **kw: Any):
    kw.setdefault("velocity_limit", 3)
    kw.setdefault("velocity_window_s", WINDOW_S)
    return FraudRules(RedisVelocityStore(redis), clock=clock, **kw)


async def test_the_amount_limit_names_the_amount_and_the_limit(redis_clients) -> None:
    rules = rules_on(redis_clients[0], max_amount_cents={"USD": 100_000, "JPY": 150_000})
    who = user()
    assert (await rules.check(who, payment(), 100_000, "usd")).allowed
    refused = await rules.check(who, payment(), 100_001, "USD")
    assert (refused.allowed, refused.rule) == (False, "amount_limit")
    assert refused.reason == "amount 1000.01 USD exceeds the limit of 1000.00 USD per payment"
    assert (await rules.check(who, payment(), 100, "GBP")).reason == (
        "payments in GBP are not accepted"
    )


async def test_velocity_counts_allowed_payments_per_user_per_window(redis_clients) -> None:
    clock = Clock()
    rules = rules_on(redis_clients[0], clock)
    who = user()
    for _ in range(3):
        assert (await rules.check(who, payment(), 100, "USD")).allowed
    refused = await rules.check(who, payment(), 100, "USD")
    assert (refused.allowed, refused.rule) == (False, "velocity")
    assert refused.reason == f"user {who} made 3 payments in the last 60 s; the limit is 3"
    assert (await rules.check(user(), payment(), 100, "USD")).allowed  # per user
    clock.now += WINDOW_S
    assert not (await rules.check(who, payment(), 10**9, "USD")).allowed  # over the amount...
    assert (await rules.check(who, payment(), 100, "USD")).allowed  # ...was not counted
    assert (await rules.check(who, payment(), 100, "USD")).allowed
    assert (await rules.check(who, payment(), 100, "USD")).allowed
    assert not (await rules.check(who, payment(), 100, "USD")).allowed


async def test_the_window_slides_rather_than_resetting(redis_clients) -> None:
    clock = Clock()
    rules = rules_on(redis_clients[0], clock, velocity_limit=2, velocity_window_s=10)
    who, start = user(), clock.now

    async def at(offset: float) -> bool:
        clock.now = start + offset
        return (await rules.check(who, payment(), 100, "USD")).allowed

    # Payments at 0 and 5; each leaves the window 10 s after it was made, not at a boundary.
    assert [await at(0), await at(5), await at(9.9)] == [True, True, False]
    assert [await at(10.0), await at(14.9)] == [True, False]  # 0 left; 5 and 10 remain
    assert await at(15.0)  # 5 left


async def test_a_resumed_payment_counts_once(redis_clients) -> None:
    rules = rules_on(redis_clients[0])
    who, resumed = user(), payment()
    for _ in range(3):  # a charge retried after 503s is checked again each time
        assert (await rules.check(who, resumed, 100, "USD")).allowed
    assert (await rules.check(who, payment(), 100, "USD")).allowed
    assert (await rules.check(who, payment(), 100, "USD")).allowed
    refused = await rules.check(who, payment(), 100, "USD")
    assert not refused.allowed and "made 3 payments" in (refused.reason or "")
    assert (await rules.check(who, resumed, 100, "USD")).allowed  # it holds its place


async def test_one_key_per_user_on_the_users_slot_with_an_expiry(redis_clients) -> None:
    redis = redis_clients[0]
    rules = rules_on(redis)
    who = user()
    await rules.check(who, payment(), 100, "USD")
    key = RedisVelocityStore.key(who)
    assert f"{{{who}}}" in key
    key_slot = await redis.execute_command("CLUSTER KEYSLOT", key)
    assert key_slot == await redis.execute_command("CLUSTER KEYSLOT", who)
    assert 0 < await redis.pttl(key) <= WINDOW_S * 1000  # gone a window after its last entry
    assert await redis.zcard(key) == 1


async def test_replicas_share_one_limit_under_concurrency(redis_clients) -> None:
    # Two processes' rules, each with its own client; 20 payments at once over both.
    replicas = [rules_on(redis) for redis in redis_clients]
    who = user()
    decisions = await asyncio.gather(
        *(replicas[n % 2].check(who, payment(), 100, "USD") for n in range(20))
    )
    assert sum(d.allowed for d in decisions) == 3


# --- Redis cannot answer --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
async def silent_node() -> AsyncIterator[HostPort]:
    """A node that accepts connections and never answers (a hung Redis)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield HostPort("127.0.0.1", server.sockets[0].getsockname()[1])
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


def unavailable(registry: CollectorRegistry, outcome: str) -> float:
    value = registry.get_sample_value(PAYMENT_VELOCITY_UNAVAILABLE, {"outcome": outcome})
    return value or 0.0


@pytest.mark.parametrize("node", ["refusing", "silent"])
async def test_without_redis_a_payment_is_deferred_by_default(
    node: str, silent_node: HostPort
) -> None:
    if node == "refusing":  # nothing listens on either seed: the cluster client's path
        nodes = [HostPort("127.0.0.1", _free_port()) for _ in range(2)]
    else:
        nodes = [silent_node]
    redis = client(nodes, None, timeout_s=5.0)  # slower than the rule's own bound
    registry = CollectorRegistry()
    rules = rules_on(redis, registry=registry)
    started = time.monotonic()
    try:
        with pytest.raises(VelocityUnavailable):
            await rules.check(user(), payment(), 1, "USD")
    finally:
        await redis.aclose()
    assert time.monotonic() - started < 3.0  # VELOCITY_TIMEOUT_S (1 s), generously
    assert unavailable(registry, "deferred") == 1


async def test_without_redis_small_payments_may_go_unchecked() -> None:
    redis = client([HostPort("127.0.0.1", _free_port())], None)
    registry = CollectorRegistry()
    rules = rules_on(redis, registry=registry, unchecked_max_cents=1000)
    try:
        assert (await rules.check(user(), payment(), 1000, "USD")).allowed
        with pytest.raises(VelocityUnavailable):
            await rules.check(user(), payment(), 1001, "USD")
        assert not (await rules.check(user(), payment(), 10**9, "USD")).allowed  # amount rule
    finally:
        await redis.aclose()
    assert unavailable(registry, "allowed_unchecked") == 1
    assert unavailable(registry, "deferred") == 1


# --- the service: two replicas, one limit ---------------------------------------------------


@pytest.fixture
async def replicas(
    aiohttp_client, aiohttp_server, settings_for, tmp_path: Path
) -> list[TestClient]:
    """Two payment service instances on the same database and Redis, as two pods."""
    env = {"MAX_AMOUNT_CENTS": "500000", "VELOCITY_LIMIT": "3", "PROVIDER_TIMEOUT_SECONDS": "1"}
    for kind, credentials in DEFAULT_CREDENTIALS.items():
        server = await aiohttp_server(build(kind).app())  # type: ignore[arg-type]
        (tmp_path / kind).write_text(credentials)
        env[f"{kind.upper()}_URL"] = str(server.make_url("")).rstrip("/")
        env[f"{kind.upper()}_API_KEY_FILE"] = str(tmp_path / kind)
    return [
        await aiohttp_client(init_app(settings_for(PaymentSettings, "payment", **env)))
        for _ in range(2)
    ]


def charge_of(who: str, amount: int = 2599) -> dict[str, Any]:
    order = uuid.uuid4().int % 10**12 + 1
    return {
        "order_id": order,
        "user_id": who,
        "amount_cents": amount,
        "currency": "USD",
        "token": "tok_visa",
    }


def headers(tokens: Tokens) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {tokens.issue('order', 'service', 'saga')}",
        "Idempotency-Key": f"order-{uuid.uuid4().hex}",
    }


async def test_two_replicas_together_allow_exactly_the_limit(
    replicas: list[TestClient], tokens: Tokens
) -> None:
    who = user()
    responses = await asyncio.gather(
        *(
            replicas[n % 2].post("/api/payments", json=charge_of(who), headers=headers(tokens))
            for n in range(8)
        )
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [201] * 3 + [402] * 5
    refusals = [await r.json() for r in responses if r.status == 402]
    assert all("the limit is 3" in body["message"] for body in refusals)
    # Sequentially on either replica: still refused, the window is one.
    for replica in replicas:
        late = await replica.post("/api/payments", json=charge_of(who), headers=headers(tokens))
        assert late.status == 402


async def test_a_charge_waits_for_redis_and_then_counts_once(
    replicas: list[TestClient], tokens: Tokens, redis_clients
) -> None:
    """Only the user's window cannot be read (its slot's master is down, say): the charge
    answers 503 and stays pending; the retry with the same key, once Redis is back, charges."""
    app: web.Application = replicas[0].server.app
    rules = app[FRAUD]
    working = rules.store
    dead = client([HostPort("127.0.0.1", _free_port())], None)
    rules.store = RedisVelocityStore(dead)
    who, sent = user(), headers(tokens)
    body = charge_of(who)
    try:
        deferred = await replicas[0].post("/api/payments", json=body, headers=sent)
        assert deferred.status == 503, await deferred.text()
        assert deferred.headers["Retry-After"] == "1"
        assert "fraud" in (await deferred.json())["message"]
    finally:
        rules.store = working
        await dead.aclose()
    for _ in range(2):  # the retry, and a replay of it
        resumed = await replicas[1].post("/api/payments", json=body, headers=sent)
        assert resumed.status == 201, await resumed.text()
        assert (await resumed.json())["status"] == "captured"
    assert await redis_clients[0].zcard(RedisVelocityStore.key(who)) == 1
    metrics = await (await replicas[0].get("/metrics")).text()
    assert f'{PAYMENT_VELOCITY_UNAVAILABLE}{{outcome="deferred"}} 1.0' in metrics
