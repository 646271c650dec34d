"""Month arithmetic of the `orders` partition job (the SQL runs against PostgreSQL in the
service tests)."""

import itertools
from datetime import date

import pytest

from services.maintenance.partitions import month_partitions


def test_this_month_and_the_next_ones_across_a_year_end() -> None:
    partitions = month_partitions(date(2026, 11, 25), ahead=3)
    assert [p.name for p in partitions] == [
        "orders_2026_11",
        "orders_2026_12",
        "orders_2027_01",
        "orders_2027_02",
    ]
    assert partitions[1].start == date(2026, 12, 1) and partitions[1].end == date(2027, 1, 1)
    # Each partition starts where the previous one ends: no gap, no overlap.
    assert all(a.end == b.start for a, b in itertools.pairwise(partitions))


def test_sql_creates_each_partition_once() -> None:
    (partition,) = month_partitions(date(2027, 2, 10), ahead=0)
    assert partition.create_sql() == (
        "CREATE TABLE IF NOT EXISTS orders_2027_02 PARTITION OF orders "
        "FOR VALUES FROM ('2027-02-01') TO ('2027-03-01')"
    )


def test_negative_lookahead_is_refused() -> None:
    with pytest.raises(ValueError, match="ahead must be >= 0"):
        month_partitions(date(2026, 1, 1), ahead=-1)
