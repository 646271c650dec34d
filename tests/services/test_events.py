"""The event bus against real PostgreSQL and the Redis cluster: the outbox relay, consumer
groups, at-least-once redelivery after a failure, and the dead-letter stream."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from services.kit.db import Database, DatabaseConfig, Endpoint
from services.kit.events import DEAD_LETTER_SUFFIX, Consumer, Event, OutboxRelay, publish, stream
from stacks.local.data_tier import DataTier


@pytest.fixture
async def database(platform: DataTier) -> AsyncIterator[Database]:
    db = Database(
        DatabaseConfig(
            endpoint=Endpoint.parse(platform.postgres.pgpool),
            database="shop",
            user="shop",
            password_file=Path(platform.postgres.app_password_file),
            min_connections=1,
            max_connections=2,
        )
    )
    await db.start()
    yield db
    await db.close()


def topic() -> str:
    return f"test.{uuid.uuid4().hex[:8]}"


async def test_committed_outbox_rows_reach_their_stream_once(
    database: Database, redis: RedisCluster
) -> None:
    name = topic()
    async with database.transaction() as connection:
        for n in range(3):
            await connection.execute(
                "INSERT INTO outbox (topic, key, payload) VALUES ($1, $2, $3::jsonb)",
                name,
                str(n),
                json.dumps({"n": n}),
            )
    relay = OutboxRelay(database, redis)
    while await relay.relay_once():
        pass
    entries = await redis.xrange(stream(name))
    assert [json.loads(fields[b"payload"])["n"] for _, fields in entries] == [0, 1, 2]
    assert await relay.relay_once() == 0  # published rows are not relayed again
    unpublished = await database.fetchval(
        "SELECT count(*) FROM outbox WHERE topic = $1 AND published_at IS NULL", name, fresh=True
    )
    assert unpublished == 0


async def test_a_rolled_back_transaction_publishes_nothing(
    database: Database, redis: RedisCluster
) -> None:
    name = topic()
    with pytest.raises(RuntimeError):
        async with database.transaction() as connection:
            await connection.execute(
                "INSERT INTO outbox (topic, key, payload) VALUES ($1, 'k', '{}'::jsonb)", name
            )
            raise RuntimeError("the state change failed")
    await OutboxRelay(database, redis).relay_once()
    assert await redis.xlen(stream(name)) == 0


async def test_a_failed_handler_is_retried_then_dead_lettered(redis: RedisCluster) -> None:
    name, seen = topic(), []

    async def flaky(event: Event) -> None:
        seen.append((event.key, event.deliveries))
        if event.key == "poison" or len(seen) == 1:
            raise RuntimeError("handler failed")

    consumer = Consumer(
        redis, "test-group", [name], flaky, max_deliveries=3, retry_after_s=0.05, block_ms=50
    )
    await consumer.ensure_groups()
    await publish(redis, name, "good", {"ok": True})
    await publish(redis, name, "poison", {"ok": False})
    for _ in range(40):
        await consumer.poll()
        if await redis.xlen(stream(name) + DEAD_LETTER_SUFFIX):
            break
    good = [d for k, d in seen if k == "good"]
    assert good == [1, 2]  # failed once, redelivered, then acknowledged
    assert [d for k, d in seen if k == "poison"] == [1, 2, 3]
    dead = await redis.xrange(stream(name) + DEAD_LETTER_SUFFIX)
    assert len(dead) == 1 and dead[0][1][b"key"] == b"poison"
    pending = await redis.xpending(stream(name), "test-group")
    assert pending["pending"] == 0


async def test_each_group_gets_every_event_and_members_share_them(redis: RedisCluster) -> None:
    name = topic()
    got: dict[str, list[str]] = {"a1": [], "a2": [], "b": []}

    def handler(member: str):  # type: ignore[no-untyped-def]
        async def handle(event: Event) -> None:
            got[member].append(event.key)

        return handle

    members = [
        Consumer(redis, "group-a", [name], handler("a1"), name="a1", block_ms=20),
        Consumer(redis, "group-a", [name], handler("a2"), name="a2", block_ms=20),
        Consumer(redis, "group-b", [name], handler("b"), name="b", block_ms=20),
    ]
    for member in members:
        await member.ensure_groups()
    for n in range(10):
        await publish(redis, name, str(n), {})
    for _ in range(5):
        for member in members:
            await member.poll()
    assert sorted(got["a1"] + got["a2"], key=int) == [str(n) for n in range(10)]
    assert sorted(got["b"], key=int) == [str(n) for n in range(10)]


async def test_dead_letters_are_redriven_to_their_own_group_until_they_pass(
    redis: RedisCluster,
) -> None:
    """A dependency down for longer than the retries: the message is dead-lettered, then
    handed to the handler again once it has rested; it leaves the dead-letter stream when it
    passes, another group's dead letters are left alone, and one that never passes stops
    after `max_redrives` and is counted."""
    name, outage, seen = topic(), {"down": True}, []

    async def needs_dependency(event: Event) -> None:
        seen.append(event.key)
        if outage["down"] or event.key == "poison":
            raise RuntimeError("dependency down")

    consumer = Consumer(
        redis,
        "redrive-group",
        [name],
        needs_dependency,
        max_deliveries=2,
        retry_after_s=0.05,
        block_ms=50,
        redrive_after_s=60,
        max_redrives=2,
    )
    await consumer.ensure_groups()
    dead = stream(name) + DEAD_LETTER_SUFFIX
    await redis.xadd(dead, {"key": "theirs", "payload": "{}", "group": "other-group"})
    await publish(redis, name, "order-1", {"n": 1})
    await publish(redis, name, "poison", {"n": 2})
    for _ in range(60):
        await consumer.poll()
        if await redis.xlen(dead) == 3:
            break
    assert await redis.xlen(dead) == 3

    later = int(time.time() * 1000) + 61_000
    assert await consumer.redrive() == 0  # too soon: they rest first
    outage["down"] = False  # the dependency is back
    seen.clear()
    assert await consumer.redrive(now_ms=later) == 1
    assert sorted(seen) == ["order-1", "poison"]  # never "theirs"
    assert await consumer.redrive(now_ms=later + 61_000) == 0  # poison: 2nd re-drive fails
    assert await consumer.redrive(now_ms=later + 122_000) == 0  # stays: max_redrives reached
    assert seen.count("poison") == 2 and consumer.dead_letters == 1
    left = {e[1][b"key"] for e in await redis.xrange(dead)}
    assert left == {b"poison", b"theirs"}
