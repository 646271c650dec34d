"""The local data tier: real PostgreSQL + PgPool-II, a Redis cluster and Memcached processes.

Uses the session's ``data_tier`` fixture (tests/conftest.py); the last tests start and stop
small tiers of their own.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from pathlib import Path

import asyncpg
import emcache
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AuthenticationError, ResponseError

from components.conf.pgpool import pgpool_files
from components.conf.redis import redis_conf
from components.conf.scripts import POSTGRES_START_SH, postgres_files
from stacks.local.data_tier import DataTier, DataTierConfig
from stacks.local.ports import PortAllocator, is_taken
from stacks.local.postgres import CLIENT_CIDRS
from stacks.local.process import LocalPlatformError, pid_alive
from stacks.services import SERVICES
from stacks.wiring import USERS
from tests.conftest import fresh_state_dir

PROBE_TABLE = "local_data_tier_probe"


def _port(address: str) -> str:
    return address.rsplit(":", 1)[1]


# --- PostgreSQL through PgPool-II -------------------------------------------------------------


def test_pgpool_sends_writes_to_the_primary_and_reads_to_the_replica(data_tier: DataTier) -> None:
    pg = data_tier.postgres
    replica = pg.replicas[0]

    async def scenario() -> tuple[str, str]:
        writer = await asyncpg.connect(pg.pgpool_dsn)
        try:
            await writer.execute(
                f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} (id int PRIMARY KEY, port text)"
            )
            # current_setting() is evaluated by the server that runs the INSERT.
            await writer.execute(
                f"INSERT INTO {PROBE_TABLE} VALUES (1, current_setting('port')) "
                "ON CONFLICT (id) DO UPDATE SET port = EXCLUDED.port"
            )
        finally:
            await writer.close()
        reader = await asyncpg.connect(pg.pgpool_dsn)  # a session without writes
        try:
            deadline = time.monotonic() + 10
            while True:  # commit waits for the standby's flush, not its replay
                row = await reader.fetchrow(
                    f"SELECT port AS written_on, current_setting('port') AS read_on "
                    f"FROM {PROBE_TABLE} WHERE id = 1"
                )
                if row is not None or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
        finally:
            await reader.close()
        assert row is not None, "the row written through pgpool never reached the replica"
        return row["written_on"], row["read_on"]

    before = {n.node_id: n.select_cnt for n in pg.pool_nodes()}
    written_on, read_on = asyncio.run(scenario())
    after = pg.pool_nodes()

    assert written_on == _port(pg.primary)
    assert read_on == _port(replica)
    assert [(n.address, n.role, n.status) for n in after] == [
        (pg.primary, "primary", "up"),
        (replica, "standby", "up"),
    ]
    assert after[1].select_cnt > before[1]  # pgpool itself counted the read on the standby


def test_replication_is_synchronous(data_tier: DataTier) -> None:
    pg = data_tier.postgres

    async def scenario() -> None:
        primary = await asyncpg.connect(pg.dsn(pg.primary, USERS.superuser, "postgres"))
        try:
            rows = await primary.fetch(
                "SELECT application_name, state, sync_state FROM pg_stat_replication"
            )
            assert [tuple(r) for r in rows] == [("pg-1", "streaming", "quorum")]
            assert await primary.fetchval("SHOW synchronous_standby_names") == (
                'ANY 1 ("pg-1")'  # pg-0's quorum: the standby in another zone
            )
            assert await primary.fetchval("SHOW synchronous_commit") == "on"
            assert await primary.fetchval("SELECT pg_is_in_recovery()") is False
        finally:
            await primary.close()
        standby = await asyncpg.connect(pg.replica_dsns[0])  # the app role, directly
        try:
            assert await standby.fetchval("SELECT pg_is_in_recovery()") is True
        finally:
            await standby.close()

    asyncio.run(scenario())


def test_files_on_disk_are_the_renderers_output(data_tier: DataTier) -> None:
    """One source of truth: the local platform runs exactly what components/conf renders."""
    pg, redis = data_tier.postgres, data_tier.redis
    rendered = postgres_files(pg.topology, USERS, CLIENT_CIDRS, pg.tuning)
    conf_dir = Path(pg.topology.conf_dir)
    assert (conf_dir / "postgresql.conf").read_text() == rendered["postgresql.conf"]
    assert (conf_dir / "pg_hba.conf").read_text() == rendered["pg_hba.conf"]
    assert (pg.root / POSTGRES_START_SH).read_text() == rendered[POSTGRES_START_SH]
    settings = pg.pgpool_settings
    for name, text in pgpool_files(pg.topology, USERS, settings, CLIENT_CIDRS, pg.tuning).items():
        assert Path(settings.path(name)).read_text() == text, name
    node = redis.spec.nodes[0]
    expected = redis_conf(
        node, redis.spec, str(redis.root / node.name), bind=("127.0.0.1",),
        auth_include=str(redis.auth_include),
    )  # fmt: skip
    assert (redis.root / f"{node.name}.conf").read_text() == expected


def test_services_get_their_environment_as_on_gke(data_tier: DataTier) -> None:
    env = data_tier.service_environment(SERVICES["product"])
    assert f"{env['DATABASE_HOST']}:{env['DATABASE_PORT']}" == data_tier.postgres.pgpool
    assert env["REDIS_NODES"].split(",") == list(data_tier.redis.nodes)
    assert env["MEMCACHED_NODES"].split(",") == list(data_tier.memcached.nodes)
    for secret in (env["DATABASE_PASSWORD_FILE"], env["REDIS_PASSWORD_FILE"]):
        assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    password = Path(env["DATABASE_PASSWORD_FILE"]).read_text()

    async def connect() -> int:
        conn = await asyncpg.connect(
            host=env["DATABASE_HOST"],
            port=int(env["DATABASE_PORT"]),
            user=env["DATABASE_USER"],
            database=env["DATABASE_NAME"],
            password=password,
        )
        try:
            return await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    assert asyncio.run(connect()) == 1


# --- Redis and Memcached --------------------------------------------------------------------


def test_redis_cluster_of_three_masters_and_three_replicas(data_tier: DataTier) -> None:
    redis = data_tier.redis
    host, port = redis.nodes[0].rsplit(":", 1)

    async def scenario() -> None:
        node = aioredis.Redis(host=host, port=int(port), password=redis.password)
        try:
            info = (await node.execute_command("CLUSTER", "INFO")).decode()
            nodes = (await node.execute_command("CLUSTER", "NODES")).decode().splitlines()
        finally:
            await node.aclose()
        assert "cluster_state:ok" in info.split()
        flags = [line.split()[2] for line in nodes]
        assert sum("master" in f for f in flags) == 3
        assert sum("slave" in f for f in flags) == 3
        assert not [f for f in flags if "fail" in f]
        # Zones as on GKE (node i in zone i mod 3): no replica beside its master.
        zone_of_port = {n.port: n.zone for n in redis.spec.nodes}
        zone_of_id = {
            line.split()[0]: zone_of_port[int(line.split()[1].split("@")[0].rsplit(":", 1)[1])]
            for line in nodes
        }
        pairs = [(line.split()[0], line.split()[3]) for line in nodes if "slave" in line.split()[2]]
        assert len(pairs) == 3 and len(set(zone_of_id.values())) == 3
        assert all(zone_of_id[replica] != zone_of_id[master] for replica, master in pairs), nodes

        cluster = RedisCluster(host=host, port=int(port), password=redis.password)
        try:
            keys = [f"local-data-tier:{i}" for i in range(30)]
            for key in keys:
                await cluster.set(key, key.upper(), ex=60)
            assert [await cluster.get(k) for k in keys] == [k.upper().encode() for k in keys]
            owners = {cluster.get_node_from_key(k).name for k in keys}
            assert len(owners) == 3  # the keys really spread over the three shards
        finally:
            await cluster.aclose()

        anonymous = aioredis.Redis(host=host, port=int(port))
        try:
            with pytest.raises((AuthenticationError, ResponseError)):
                await anonymous.get("local-data-tier:0")
        finally:
            await anonymous.aclose()

    asyncio.run(scenario())


def test_memcached_nodes_answer(data_tier: DataTier) -> None:
    addresses = [
        emcache.MemcachedHostAddress(host, int(port))
        for host, port in (node.rsplit(":", 1) for node in data_tier.memcached.nodes)
    ]
    assert len(addresses) == 2

    async def scenario() -> None:
        client = await emcache.create_client(addresses)
        try:
            for address in addresses:
                assert (await client.version(address) or "").startswith("1.6")
            keys = [f"local-data-tier-{i}".encode() for i in range(20)]
            for key in keys:
                await client.set(key, key[::-1], exptime=60)
            items = [await client.get(key) for key in keys]
            assert [item.value if item else None for item in items] == [k[::-1] for k in keys]
        finally:
            await client.close()

    asyncio.run(scenario())


# --- a tier of their own: stop leaves nothing behind, clear messages ---------------------------


def group_pids(leaders: list[int]) -> set[int]:
    """The leaders and every process in their process groups (postgres backends, pgpool
    children, ...)."""
    found = set(leaders)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            if int(text[text.rindex(")") + 2 :].split()[2]) in leaders:
                found.add(int(entry.name))
    return found


def test_a_stopped_tier_leaves_no_process_and_no_port_behind() -> None:
    small = DataTierConfig(
        pg_replicas=0, redis_masters=3, redis_replicas_per_master=0, memcached_nodes=1
    )
    with fresh_state_dir("data-tier-small-") as state:
        tier = DataTier(state, small)
        with tier:
            assert tier.postgres.pool_nodes()[0].role == "primary"
            pids = group_pids([p.pid for p in tier.processes])
            ports = dict(tier.ports.assigned)
            assert len(pids) > len(tier.processes)  # the servers' own children count too
            assert all(is_taken(port) for what, port in ports.items() if "pcp" not in what)
            with pytest.raises(LocalPlatformError, match=r"still running.*down"):
                DataTier(state, small)
        assert [pid for pid in pids if pid_alive(pid)] == []
        assert [what for what, port in ports.items() if is_taken(port)] == []
        with pytest.raises(LocalPlatformError, match=r"not empty.*rm -rf"):
            DataTier(state, small)


def test_a_taken_port_is_named() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(LocalPlatformError, match=f"port {port} on 127.0.0.1 \\(pgpool\\)"):
            PortAllocator(base=port).take("pgpool")


def test_failover_never_promotes_a_standby_that_may_lack_acknowledged_commits() -> None:
    """Three members in three zones: pg-0's commits wait for pg-1 or pg-2. With pg-1 gone
    first and then pg-0, only pg-2 answers: it may lack a commit that pg-1 alone
    acknowledged, so pgpool's failover script refuses to promote it (and says why) rather
    than lose acknowledged orders."""
    config = DataTierConfig(
        pg_replicas=2, redis_masters=3, redis_replicas_per_master=0, memcached_nodes=1
    )
    with fresh_state_dir("data-tier-quorum-") as state, DataTier(state, config) as tier:
        pg = tier.postgres
        assert [m.zone for m in pg.topology.members] == ["zone-a", "zone-b", "zone-c"]
        pgpool = pg.processes[-1]
        pg.stop_member("pg-1")
        pg.query(pg.primary, "CREATE TABLE acknowledged (n int)")  # pg-2 acknowledges it
        pg.stop_member("pg-0")
        deadline = time.monotonic() + 60
        refusal = "none is known to hold every acknowledged commit"
        while refusal not in pgpool.log.read_text(errors="replace"):
            assert time.monotonic() < deadline, pgpool.log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        assert "only 1 of the 2 standbys that acknowledge pg-0's commits answer" in (
            pgpool.log.read_text(errors="replace")
        )
        standby = pg.topology.member("pg-2").address
        rows = pg.query(standby, "SELECT pg_is_in_recovery() AS recovering")
        assert rows == [{"recovering": "t"}]  # not promoted
