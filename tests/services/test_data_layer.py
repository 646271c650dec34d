"""The data layer against real PostgreSQL behind PgPool-II: migrations, partitions, routing."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg
import pytest

from services.kit.db import Database, DatabaseConfig, Endpoint
from services.kit.errors import DatabaseBusy
from services.kit.exports import DB_POOL_TIMEOUTS, DB_POOL_WAIT_SECONDS, DB_QUERY_SECONDS
from services.kit.metrics import Metrics
from services.kit.migrate import Migration, MigrationError, load, migrate
from services.maintenance.partitions import ensure_partitions
from stacks.local.data_tier import DataTier


def config(tier: DataTier, replica: bool = False) -> DatabaseConfig:
    return DatabaseConfig(
        endpoint=Endpoint.parse(tier.postgres.primary if replica else tier.postgres.pgpool),
        database="shop",
        user="shop",
        password_file=Path(tier.postgres.app_password_file),
        replica=Endpoint.parse(tier.postgres.replicas[0]) if replica else None,
        min_connections=1,
        max_connections=2,
    )


async def replicated(tier: DataTier, probe: str, timeout_s: float = 10.0) -> None:
    """Wait until the replica shows what the primary just committed (PgPool-II needs a new
    database on every backend before it can connect to it)."""
    replica = await asyncpg.connect(
        tier.postgres.dsn(tier.postgres.replicas[0], role="postgres", database="postgres")
    )
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while await replica.fetchval(probe) is None:
            assert asyncio.get_running_loop().time() < deadline, f"not replicated: {probe}"
            await asyncio.sleep(0.05)
    finally:
        await replica.close()


async def test_migrations_apply_once_and_refuse_edits(platform: DataTier) -> None:
    connection = await asyncpg.connect(platform.postgres.pgpool_dsn)
    try:
        assert await migrate(connection) == []  # the session fixture applied them
        versions = [
            r["version"] for r in await connection.fetch("SELECT version FROM schema_migrations")
        ]
        assert versions == [m.version for m in load()]
        edited = [Migration(load()[0].version, load()[0].sql + "\n-- edited")]
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(connection, edited)
    finally:
        await connection.close()


async def test_concurrent_runners_apply_each_migration_once(platform: DataTier) -> None:
    """Several pods starting at once: the advisory lock makes them take turns."""
    admin = await asyncpg.connect(
        platform.postgres.dsn(platform.postgres.primary, role="postgres", database="postgres")
    )
    try:
        await admin.execute("DROP DATABASE IF EXISTS migrate_race")
        await admin.execute("CREATE DATABASE migrate_race OWNER shop")
        await replicated(platform, "SELECT 1 FROM pg_database WHERE datname = 'migrate_race'")
        dsn = platform.postgres.dsn(platform.postgres.pgpool, database="migrate_race")
        connections = [await asyncpg.connect(dsn) for _ in range(3)]
        try:
            results = await asyncio.gather(*(migrate(c) for c in connections))
        finally:
            for connection in connections:
                await connection.close()
        assert sorted(len(r) for r in results) == [0, 0, len(load())]
    finally:
        await admin.execute("DROP DATABASE IF EXISTS migrate_race WITH (FORCE)")
        await admin.close()


async def test_partitions_for_any_month_and_a_default_for_the_rest(platform: DataTier) -> None:
    connection = await asyncpg.connect(platform.postgres.pgpool_dsn)
    try:
        names = await ensure_partitions(connection, date(2031, 11, 20), ahead=2)
        assert names == ["orders_2031_11", "orders_2031_12", "orders_2032_01"]
        assert (
            await ensure_partitions(connection, date(2031, 11, 20), ahead=2) == names
        )  # idempotent

        async def land(created: datetime) -> str:
            async with connection.transaction():
                return await connection.fetchval(
                    """INSERT INTO orders (user_id, total_cents, created_at) VALUES (1, 100, $1)
                       RETURNING tableoid::regclass::text""",
                    created,
                )

        assert await land(datetime(2031, 12, 31, 23, 59, tzinfo=UTC)) == "orders_2031_12"
        # A month nobody created a partition for still takes the order.
        assert await land(datetime(2040, 5, 1, tzinfo=UTC)) == "orders_default"
    finally:
        await connection.execute("DELETE FROM orders WHERE user_id = 1 AND total_cents = 100")
        await connection.close()


async def test_reads_go_to_the_replica_and_fresh_reads_to_the_primary(platform: DataTier) -> None:
    primary_port = platform.postgres.primary.rsplit(":", 1)[1]
    replica_port = platform.postgres.replicas[0].rsplit(":", 1)[1]
    for explicit_replica in (False, True):  # through PgPool-II, and with a replica pool
        database = Database(config(platform, replica=explicit_replica))
        await database.start()
        try:
            assert await database.fetchval("SELECT current_setting('port')") == replica_port
            assert (
                await database.fetchval("SELECT current_setting('port')", fresh=True)
                == primary_port
            )
            async with database.transaction() as connection:
                await connection.execute("CREATE TEMP TABLE probe (x int)")
                assert await connection.fetchval("SELECT current_setting('port')") == primary_port
            await database.check()
        finally:
            await database.close()


async def test_a_read_survives_its_pooled_connection_being_closed(platform: DataTier) -> None:
    """What pgpool does to every client when it restarts its children (failover, a node
    attached again): the next plain read is retried once on a new connection. (That writes
    are not retried is not tested here: asyncpg may notice the closed connection by itself
    before the write is sent, and then there is nothing to retry.)"""
    # Straight to the servers, with a pool of several connections that all get dropped.
    database = Database(
        replace(config(platform, replica=True), min_connections=4, max_connections=4)
    )
    await database.start()
    admin = await asyncpg.connect(platform.postgres.dsn(platform.postgres.primary, role="postgres"))

    async def drop_app_connections() -> int:
        return await admin.fetchval(
            """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                WHERE usename = 'shop' AND pid <> pg_backend_pid()"""
        )

    try:
        assert await database.fetchval("SELECT 41 + 1", fresh=True) == 42
        assert await drop_app_connections() >= 1
        assert await database.fetchval("SELECT 41 + 1", fresh=True) == 42
    finally:
        await admin.close()
        await database.close()


async def test_readiness_of_a_busy_pool_is_its_latest_answer(platform: DataTier) -> None:
    """Every connection busy with work: readiness does not queue behind it when a query has
    just succeeded; with no recent answer it asks the database itself (and waits)."""
    database = Database(config(platform))  # through PgPool-II, 2 connections
    await database.start()
    try:
        assert await database.fetchval("SELECT 1", fresh=True) == 1
        busy = [
            asyncio.create_task(database.fetchval("SELECT pg_sleep(1)", fresh=True))
            for _ in range(2)
        ]
        await asyncio.sleep(0.1)
        await asyncio.wait_for(database.check(), 0.2)  # answered lately: no probe
        database._answered.clear()  # as if nothing had answered for a while
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(database.check(), 0.2)  # a probe, queued behind the work
        await asyncio.gather(*busy)
        await asyncio.wait_for(database.check(), 0.5)
    finally:
        await database.close()


async def test_the_wait_for_a_connection_is_measured_apart_from_the_query(
    platform: DataTier,
) -> None:
    """A pool too small for its load shows as waits, not as slow queries: with the only
    connection held for 0.3 s, the next read waits that long and then runs in milliseconds."""
    metrics = Metrics("layer-test")
    database = Database(
        replace(config(platform), min_connections=1, max_connections=1), "layer-test", metrics
    )
    await database.start()
    try:
        async with database.transaction():
            read = asyncio.create_task(database.fetchval("SELECT 1"))
            await asyncio.sleep(0.3)
        assert await read == 1
    finally:
        await database.close()

    def histogram(name: str, **labels: str) -> tuple[float, float]:
        """(count, sum) of one labelled histogram."""
        at = {"service": "layer-test", **labels}
        value = metrics.registry.get_sample_value
        return value(f"{name}_count", at) or 0.0, value(f"{name}_sum", at) or 0.0

    waits, waited = histogram(DB_POOL_WAIT_SECONDS, pool="primary")
    assert waits == 2 and waited >= 0.25  # the transaction's wait, then the read's
    reads, read_time = histogram(DB_QUERY_SECONDS, kind="read")
    assert reads == 1 and read_time < 0.25
    writes, write_time = histogram(DB_QUERY_SECONDS, kind="write")
    assert writes == 1 and write_time >= 0.25  # the transaction held it all along


# --- bounded waits: a full pool, a connection nobody gives back, a cancelled query -----------


async def test_a_full_pool_answers_database_busy_and_counts_it(platform: DataTier) -> None:
    metrics = Metrics("layer-test")
    database = Database(
        replace(config(platform), max_connections=1, min_connections=1, acquire_timeout_s=0.3),
        "layer-test",
        metrics,
    )
    await database.start()
    try:
        async with database.transaction():  # the only connection, held
            began = time.monotonic()
            with pytest.raises(DatabaseBusy) as refused:
                await database.fetchval("SELECT 1")
            assert 0.25 < time.monotonic() - began < 2
        assert (refused.value.status, refused.value.code) == (503, "database_busy")
        assert refused.value.headers["Retry-After"] == "1"
        assert await database.fetchval("SELECT 1") == 1  # given back: served again
    finally:
        await database.close()
    at = {"service": "layer-test", "pool": "primary"}
    assert metrics.registry.get_sample_value(f"{DB_POOL_TIMEOUTS}", at) == 1
    assert metrics.registry.get_sample_value(f"{DB_POOL_WAIT_SECONDS}_count", at) == 3


async def test_closing_never_waits_for_a_connection_nobody_gives_back(
    platform: DataTier,
) -> None:
    """What hung the suite: Pool.close() waits for every connection in use. A leaked one (a
    transaction entered and never left) is terminated once `close_timeout_s` has passed."""
    database = Database(replace(config(platform), close_timeout_s=0.5))
    await database.start()
    leaked = database.transaction()
    connection = await leaked.__aenter__()
    assert await connection.fetchval("SELECT 1") == 1
    began = time.monotonic()
    await asyncio.wait_for(database.close(), 5)
    assert 0.4 < time.monotonic() - began < 3
    with pytest.raises(asyncpg.exceptions.InterfaceError):  # taken from its holder
        await connection.fetchval("SELECT 1")


async def test_a_query_cancelled_through_pgpool_gives_its_connection_back_in_time(
    platform: DataTier,
) -> None:
    """A request cancelled mid-query (its client hung up, the server stopping): asyncpg sends
    PostgreSQL a cancel and waits for the connection to be usable again before it goes back to
    the pool. That wait is bounded by the acquire timeout, then the connection is terminated:
    the pool serves again, and closes at once."""
    database = Database(
        replace(config(platform), max_connections=1, min_connections=1, acquire_timeout_s=1.0)
    )
    await database.start()
    try:
        slow = asyncio.create_task(database.fetchval("SELECT pg_sleep(30)", fresh=True))
        await asyncio.sleep(0.3)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        began = time.monotonic()
        assert await database.fetchval("SELECT 2", fresh=True) == 2
        assert time.monotonic() - began < 3
    finally:
        began = time.monotonic()
        await asyncio.wait_for(database.close(), 5)
        assert time.monotonic() - began < 3
