"""PostgreSQL access: writes on the primary path, plain reads balanced over the replicas.

On the platform every service connects to PgPool-II, which sends writes (and everything in a
transaction after a write) to the primary and balances plain reads over the replicas. A read
that must see the caller's own recent write (read-your-writes) asks for `fresh=True`: through
PgPool it carries the `/*NO LOAD BALANCE*/` hint, which pins it to the primary. Without
PgPool (a unit test with an explicit replica), reads use a second pool on the replica and
fresh reads use the primary's.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import asyncpg

from services.kit.errors import DatabaseBusy
from services.kit.logs import get_logger
from services.kit.metrics import Metrics

log = get_logger(__name__)

# PgPool-II sends a statement starting with this comment to the primary.
PRIMARY_HINT = "/*NO LOAD BALANCE*/ "
# A connection the server side closed under us (pgpool restarting its children, a failover).
DROPPED_CONNECTION = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.InterfaceError,
    # The server's "terminating connection" notice arrived while the connection sat idle.
    asyncpg.exceptions.InternalClientError,
    ConnectionResetError,
)
# Readiness takes a query that succeeded this recently as the database's answer.
RECENT_ANSWER_S = 2.0
_PLAIN_READ = re.compile(r"\s*SELECT\b", re.IGNORECASE)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, address: str) -> Endpoint:
        host, _, port = address.rpartition(":")
        return cls(host, int(port))


@dataclass(frozen=True)
class DatabaseConfig:
    endpoint: Endpoint  # PgPool-II, or the primary itself
    database: str
    user: str
    password_file: Path
    # An explicit replica, for setups without PgPool-II (reads go there, not through hints).
    replica: Endpoint | None = None
    min_connections: int = 2
    max_connections: int = 10
    command_timeout_s: float = 10.0
    # Waiting for a pooled connection: past this, 503 `database_busy` (DatabaseBusy). The same
    # bound applies to giving one back (a connection that cannot be reset in time, e.g. a
    # cancelled query PgPool-II never answers, is terminated instead of holding the pool).
    acquire_timeout_s: float = 5.0
    # Closing: connections still in use this long after close() are terminated.
    close_timeout_s: float = 2.0

    def password(self) -> str:
        return self.password_file.read_text().strip()


async def connect(config: DatabaseConfig, endpoint: Endpoint | None = None) -> asyncpg.Connection:
    """One connection, for jobs (migrations, partition maintenance)."""
    target = endpoint or config.endpoint
    return await asyncpg.connect(
        host=target.host,
        port=target.port,
        database=config.database,
        user=config.user,
        password=config.password(),
        command_timeout=config.command_timeout_s,
    )


class Database:
    """Connection pools plus the read/write routing above; a dependency of the app.

    Metrics (when given): the wait for a pooled connection and the time a statement or
    transaction then holds it are measured apart, so a slow database and a pool too small
    for its load are told apart. `role` names a second Database of the same service (its own
    pools, e.g. the order service's saga workers): its pools are labelled `<role>-primary`."""

    def __init__(
        self,
        config: DatabaseConfig,
        service: str = "",
        metrics: Metrics | None = None,
        role: str = "",
    ) -> None:
        self.config = config
        self.service = service
        self.name = f"postgres-{role}" if role else "postgres"
        self._metrics = metrics
        self._role = role
        self._primary: asyncpg.Pool | None = None
        self._replica: asyncpg.Pool | None = None
        self._answered: dict[int, float] = {}  # id(pool) -> when a query through it last succeeded

    async def start(self) -> None:
        self._primary = await self._pool(self.config.endpoint)
        if self.config.replica is not None:
            self._replica = await self._pool(self.config.replica)
        for pool in (self._primary, self._replica):
            if pool is not None and self._metrics is not None:  # each pool's series, at 0
                self._metrics.db_pool_timeouts.labels(self.service, self._pool_label(pool))
                self._record_pool(pool)

    async def close(self) -> None:
        """Close the pools, waiting at most `close_timeout_s` for connections in use, then
        terminating them: a shutdown never waits on a connection nobody will give back."""
        for pool in (self._replica, self._primary):
            if pool is None:
                continue
            try:
                # Pool.close() terminates every connection when it is cancelled.
                await asyncio.wait_for(pool.close(), self.config.close_timeout_s)
            except TimeoutError:
                log.warning(
                    "database pool closed by force",
                    pool=self._pool_label(pool),
                    in_use=pool.get_size() - pool.get_idle_size(),
                    waited_s=self.config.close_timeout_s,
                )
        self._primary = self._replica = None

    async def check(self) -> None:
        """Readiness: each pool answered lately, or answers `SELECT 1` now.

        Under load a query that just succeeded is the proof; a probe of its own would queue
        behind the pool's work, time out, and take a busy but healthy process out of the
        gateway's rotation (then every request to the service gets a 503)."""
        if not self._answered_lately(self._primary_pool):
            await self.fetchval("SELECT 1", fresh=True)
        if self._replica is not None and not self._answered_lately(self._replica):
            await self.fetchval("SELECT 1")

    def _answered_lately(self, pool: asyncpg.Pool) -> bool:
        answered = self._answered.get(id(pool))
        return answered is not None and time.monotonic() - answered < RECENT_ANSWER_S

    # --- writes -----------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction on the primary path: writes, and reads that must see them."""
        async with self._acquire(self._primary_pool) as connection:
            started = time.perf_counter()
            async with connection.transaction():
                yield connection
            self._observe("write", started)

    async def execute(self, sql: str, *args: Any) -> str:
        return await self._write("execute", sql, args)

    async def write_fetchval(self, sql: str, *args: Any) -> Any:
        """One write statement on its own (autocommit: one round trip) and the value it
        returns (`... RETURNING x`)."""
        return await self._write("fetchval", sql, args)

    async def write_fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        """One write statement on its own (autocommit) and the row it returns."""
        return await self._write("fetchrow", sql, args)

    async def _write(
        self, method: Literal["execute", "fetchval", "fetchrow"], sql: str, args: tuple[Any, ...]
    ) -> Any:
        async with self._acquire(self._primary_pool) as connection:
            started = time.perf_counter()
            result = await getattr(connection, method)(sql, *args)
            self._observe("write", started)
        return result

    # --- reads ------------------------------------------------------------------------------

    async def fetch(self, sql: str, *args: Any, fresh: bool = False) -> list[asyncpg.Record]:
        return await self._read("fetch", sql, args, fresh)

    async def fetchrow(self, sql: str, *args: Any, fresh: bool = False) -> asyncpg.Record | None:
        return await self._read("fetchrow", sql, args, fresh)

    async def fetchval(self, sql: str, *args: Any, fresh: bool = False) -> Any:
        return await self._read("fetchval", sql, args, fresh)

    async def _read(
        self,
        method: Literal["fetch", "fetchrow", "fetchval"],
        sql: str,
        args: tuple[Any, ...],
        fresh: bool,
    ) -> Any:
        if self._replica is not None:
            pool = self._primary_pool if fresh else self._replica
        else:
            pool = self._primary_pool
            if fresh:
                sql = PRIMARY_HINT + sql

        async def run() -> Any:
            async with self._acquire(pool) as connection:
                started = time.perf_counter()
                result = await getattr(connection, method)(sql, *args)
                self._observe("read", started)
                return result

        try:
            return await run()
        except DROPPED_CONNECTION:
            # PgPool-II restarts its children on failover and when a node is attached again,
            # closing every pooled connection: replace them all, and run a plain SELECT once
            # more on a new one. Writes are not retried here (the caller's idempotency decides).
            await pool.expire_connections()
            if not _PLAIN_READ.match(sql.removeprefix(PRIMARY_HINT)):
                raise
            return await run()

    # --- internals ----------------------------------------------------------------------------

    @property
    def _primary_pool(self) -> asyncpg.Pool:
        if self._primary is None:
            raise RuntimeError("the database is not started")
        return self._primary

    async def _pool(self, endpoint: Endpoint) -> asyncpg.Pool:
        return await asyncpg.create_pool(
            host=endpoint.host,
            port=endpoint.port,
            database=self.config.database,
            user=self.config.user,
            password=self.config.password(),
            min_size=self.config.min_connections,
            max_size=self.config.max_connections,
            command_timeout=self.config.command_timeout_s,
            # Recycle idle connections so a failover is picked up by new ones.
            max_inactive_connection_lifetime=60.0,
            reset=_reset,
        )

    @asynccontextmanager
    async def _acquire(self, pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection, waited for at most `acquire_timeout_s` (then DatabaseBusy),
        and given back within the same bound (or terminated)."""
        asked, label = time.perf_counter(), self._pool_label(pool)
        try:
            connection = await pool.acquire(timeout=self.config.acquire_timeout_s)
        except TimeoutError:
            if self._metrics is not None:
                self._metrics.db_pool_wait_seconds.labels(service=self.service, pool=label).observe(
                    time.perf_counter() - asked
                )
                self._metrics.db_pool_timeouts.labels(service=self.service, pool=label).inc()
            raise DatabaseBusy(
                f"no database connection came free within {self.config.acquire_timeout_s:g} s"
            ) from None
        if self._metrics is not None:
            self._metrics.db_pool_wait_seconds.labels(service=self.service, pool=label).observe(
                time.perf_counter() - asked
            )
        self._record_pool(pool)
        try:
            yield connection
            self._answered[id(pool)] = time.monotonic()  # only when the block succeeded
        finally:
            try:
                # The acquire's timeout bounds this too; past it asyncpg terminates the
                # connection (the pool opens a new one when needed).
                await pool.release(connection)
            except Exception as error:  # asyncpg has terminated it; the block's error stands
                log.warning(
                    "database connection terminated on release", pool=label, error=repr(error)
                )
            self._record_pool(pool)

    def _pool_label(self, pool: asyncpg.Pool) -> str:
        name = "replica" if pool is self._replica else "primary"
        return f"{self._role}-{name}" if self._role else name

    def _record_pool(self, pool: asyncpg.Pool) -> None:
        if self._metrics is None:
            return
        gauge, name = self._metrics.db_pool_connections, self._pool_label(pool)
        idle = pool.get_idle_size()
        gauge.labels(service=self.service, pool=name, state="idle").set(idle)
        gauge.labels(service=self.service, pool=name, state="in_use").set(pool.get_size() - idle)

    def _observe(self, kind: str, started: float) -> None:
        """A statement or transaction's time, from holding the connection to its end."""
        if self._metrics is not None:
            self._metrics.db_query_seconds.labels(service=self.service, kind=kind).observe(
                time.perf_counter() - started
            )


async def _reset(connection: asyncpg.Connection) -> None:
    """What a connection needs before it goes back to the pool. asyncpg's default runs
    `RESET ALL; UNLISTEN *; CLOSE ALL; ...` on every release, a round trip and ~8 % of a
    write's CPU; the services never set session state (no SET, LISTEN, cursors or session
    advisory locks: `SET LOCAL` and xact locks end with their transaction), so only a
    transaction left open would leak."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")
