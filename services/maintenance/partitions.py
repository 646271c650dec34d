"""Create the coming months' partitions of the `orders` table.

`orders` is range-partitioned by month on `created_at`, with a default partition so an insert
never fails for a missing month. This job makes sure the next months exist ahead of time, so
rows land in their own month rather than in the default partition. Safe to run any number of
times, from any replica of the job: each statement is `CREATE TABLE IF NOT EXISTS`.

    python -m services.maintenance.partitions --ahead 3
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime

TABLE = "orders"


@dataclass(frozen=True)
class MonthPartition:
    name: str
    start: date  # inclusive
    end: date  # exclusive

    def create_sql(self, table: str = TABLE) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {self.name} PARTITION OF {table} "
            f"FOR VALUES FROM ('{self.start.isoformat()}') TO ('{self.end.isoformat()}')"
        )


def first_of_month(day: date, months_later: int = 0) -> date:
    index = day.year * 12 + (day.month - 1) + months_later
    return date(index // 12, index % 12 + 1, 1)


def month_partitions(today: date, ahead: int, table: str = TABLE) -> list[MonthPartition]:
    """This month's partition and the next `ahead` months'."""
    if ahead < 0:
        raise ValueError(f"ahead must be >= 0, got {ahead}")
    partitions = []
    for offset in range(ahead + 1):
        start = first_of_month(today, offset)
        partitions.append(MonthPartition(f"{table}_{start:%Y_%m}", start, first_of_month(start, 1)))
    return partitions


async def ensure_partitions(connection, today: date, ahead: int) -> list[str]:  # type: ignore[no-untyped-def]
    """Create the missing partitions in one transaction; returns the partition names."""
    partitions = month_partitions(today, ahead)
    async with connection.transaction():
        for partition in partitions:
            await connection.execute(partition.create_sql())
    return [p.name for p in partitions]


async def _run(ahead: int) -> list[str]:
    from services.kit.db import connect
    from services.kit.settings import Settings

    connection = await connect(Settings.load().database())
    try:
        return await ensure_partitions(connection, datetime.now(UTC).date(), ahead)
    finally:
        await connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ahead", type=int, default=3, help="months to create beyond this one")
    args = parser.parse_args(argv)
    names = asyncio.run(_run(args.ahead))
    print(f"partitions present: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
