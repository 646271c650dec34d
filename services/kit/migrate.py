"""Apply the SQL migrations in `services/migrations/`, in order, exactly once.

Each file is one version (its name without `.sql`), applied in its own transaction and
recorded in `schema_migrations` with a checksum. A session-level advisory lock makes
concurrent runners (several pods starting at once, the local platform) take turns; an
applied file that has since changed is refused rather than silently skipped.

    python -m services.kit.migrate          # the services' DATABASE_* environment
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from services.kit.db import PRIMARY_HINT

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"
# Any constant shared by every runner: pg_advisory_lock takes a bigint.
LOCK_ID = 0x5E0C_0A1D


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    return [Migration(path.stem, path.read_text()) for path in sorted(directory.glob("*.sql"))]


async def migrate(
    connection: asyncpg.Connection, migrations: list[Migration] | None = None
) -> list[str]:
    """Apply what is missing; returns the versions applied by this call."""
    migrations = load() if migrations is None else migrations
    await connection.execute("SELECT pg_advisory_lock($1)", LOCK_ID)
    try:
        await connection.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    text PRIMARY KEY,
                   checksum   text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now()
               )"""
        )
        applied = {
            row["version"]: row["checksum"]
            # From the primary: another runner may have committed a moment ago, which a
            # replica (PgPool-II balances plain reads) may not show yet.
            for row in await connection.fetch(
                f"{PRIMARY_HINT}SELECT version, checksum FROM schema_migrations"
            )
        }
        done = []
        for migration in migrations:
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version} changed after it was applied: "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                    migration.version,
                    migration.checksum,
                )
            done.append(migration.version)
        return done
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)


async def _main() -> list[str]:
    from services.kit.db import connect
    from services.kit.settings import Settings

    connection = await connect(Settings.load().database())
    try:
        return await migrate(connection)
    finally:
        await connection.close()


if __name__ == "__main__":
    applied = asyncio.run(_main())
    print(f"applied: {', '.join(applied) or 'nothing (up to date)'}")
    sys.exit(0)
