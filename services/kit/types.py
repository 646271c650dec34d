"""Annotated types for request models: what a value may be so that its column can store it.

    class ReservationRequest(BaseModel):
        order_id: Id
        items: Annotated[list[Item], Field(min_length=1), AfterValidator(one_line_per_sku)]

    class HistoryQuery(BaseModel):
        before: Timestamp | None = None

A value the model accepts but PostgreSQL (or asyncpg on the way there) cannot take fails the
query: a 500 for what is the client's mistake. An integer past its column's range, a datetime
without a UTC offset or outside what asyncpg converts to UTC, a SKU the products table's CHECK
refuses: these types answer 422 naming the field instead, and say so in the OpenAPI document.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Protocol, TypeVar

from pydantic import AwareDatetime, Field

INT4_MAX = 2**31 - 1  # PostgreSQL's integer
INT8_MAX = 2**63 - 1  # and bigint

# A bigint identity (orders.id, users.id, ...): positive, within bigint.
Id = Annotated[int, Field(gt=0, le=INT8_MAX)]

# As products.sku's CHECK: upper-case letters, digits and dashes.
Sku = Annotated[str, Field(pattern=r"^[A-Z0-9][A-Z0-9-]{1,63}$")]

# With its UTC offset (a naive time means whatever the server's zone is), and within a range
# asyncpg converts to UTC for timestamptz without overflowing Python's datetime (years 1 to
# 9999): any offset of a time in this range stays in it. `formatMinimum` and
# `formatExclusiveMaximum` (the JSON Schema format-assertion keywords) document the range.
TIMESTAMP_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TIMESTAMP_END = datetime(9999, 1, 1, tzinfo=UTC)
Timestamp = Annotated[
    AwareDatetime,
    Field(
        ge=TIMESTAMP_MIN,
        lt=TIMESTAMP_END,
        json_schema_extra={
            "formatMinimum": TIMESTAMP_MIN.isoformat(),
            "formatExclusiveMaximum": TIMESTAMP_END.isoformat(),
        },
    ),
]


class _Line(Protocol):
    @property
    def sku(self) -> str: ...


L = TypeVar("L", bound=_Line)


def one_line_per_sku(lines: list[L]) -> list[L]:
    """For `AfterValidator` on a list of order lines: a SKU given twice is refused (422 naming
    the list) rather than collapsed into one line, or held twice."""
    first: dict[str, int] = {}
    for index, line in enumerate(lines):
        if line.sku in first:
            raise ValueError(
                f"{line.sku} is on lines {first[line.sku]} and {index}: give each SKU once"
            )
        first[line.sku] = index
    return lines
