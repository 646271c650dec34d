"""Handing a confirmed order to the warehouse: once per order, retried, behind a breaker.

    warehouse = Warehouse(url, api_key, http, metrics.registry)
    shipment_id = await warehouse.hand_over(order)   # Accepted, Refused or a Transient error

The call is idempotent per order twice over: its `Idempotency-Key` is `order-<id>-shipment`,
so a retry whose first answer was lost gets that answer, and the warehouse ships an order
reference once (a second shipment for it answers 409 `duplicate_order` with the one it has,
which is taken as accepted). Transient failures (a timeout, a refused connection, a 5xx, 429,
a key still in progress) are retried with backoff through a `services.kit.resilience.Guard`,
the payment providers' breaker kit; past its budget the saga's event stays pending and is
redelivered, so the order stays `confirmed` until the warehouse has it. A refusal (4xx) is the
warehouse's final answer: the order stays `confirmed`, the refusal is stored with it
(`shipment_error`) and counted, for people to sort out.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.kit.exports import WAREHOUSE_BREAKER_STATE, WAREHOUSE_CALLS
from services.kit.resilience import (
    DEFAULT_BREAKER,
    DEFAULT_RETRY,
    BreakerConfig,
    Guard,
    Outcome,
    RetryPolicy,
    Transient,
)

# Confirmed orders count in ORDERS_AWAITING_SHIPMENT once the warehouse has not taken them
# this long after their confirmation.
AWAITING_SHIPMENT_AFTER_S = 900
CONNECT_TIMEOUT_S = 2.0


class WarehouseUnavailable(Transient):
    """The warehouse did not answer usefully: try again later with the same key."""


class Refused(Exception):
    """The warehouse's final no: `code` is its reason (unshippable, invalid_shipment, ...)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Handover:
    order_reference: str
    idempotency_key: str
    lines: list[dict[str, Any]]


def handover(order: dict[str, Any]) -> Handover:
    """What the warehouse is sent for `order` (the saga's payload: id and items)."""
    return Handover(
        order_reference=f"order-{order['id']}",
        idempotency_key=f"order-{order['id']}-shipment",
        lines=[{"sku": i["sku"], "quantity": i["quantity"]} for i in order["items"]],
    )


class Warehouse:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        http: aiohttp.ClientSession,
        registry: CollectorRegistry | None = None,
        *,
        timeout_s: float = 5.0,
        breaker: BreakerConfig = DEFAULT_BREAKER,
        retry: RetryPolicy = DEFAULT_RETRY,
        budget_s: float = 15.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.http = http
        self.timeout = aiohttp.ClientTimeout(
            total=timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)
        )
        registry = registry or CollectorRegistry()
        calls = Counter(
            WAREHOUSE_CALLS,
            "Calls to the warehouse by result: success, answered (refused), error (transient), "
            "breaker_open (refused without calling)",
            ["result"],
            registry=registry,
        )
        self.guard = Guard(
            "warehouse",
            breaker=breaker,
            retry=retry,
            budget_s=budget_s,
            observe=lambda outcome, _error: calls.labels(outcome.value).inc(),
        )
        for outcome in Outcome:
            calls.labels(outcome.value)  # every series exists from the start
        Gauge(
            WAREHOUSE_BREAKER_STATE,
            "The warehouse's circuit breaker: 0 closed, 1 half-open, 2 open",
            registry=registry,
        ).set_function(lambda: float(self.guard.breaker.state))

    async def hand_over(self, order: dict[str, Any]) -> str:
        """The warehouse's shipment id for `order`; `Refused`, or a `Transient` error
        (`WarehouseUnavailable`, or the guard's `BreakerOpen` / `OutOfTime`)."""
        return await self.guard.call(partial(self._send, handover(order)))

    async def _send(self, wanted: Handover) -> str:
        body = {"order_reference": wanted.order_reference, "lines": wanted.lines}
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Idempotency-Key": wanted.idempotency_key,
        }
        try:
            async with self.http.post(
                f"{self.base_url}/v1/shipments", json=body, headers=headers, timeout=self.timeout
            ) as response:
                status = response.status
                body = await response.json() if response.content_type == "application/json" else {}
        except (aiohttp.ClientError, TimeoutError) as error:
            raise WarehouseUnavailable(f"warehouse: {error or type(error).__name__}") from error
        answer = body if isinstance(body, dict) else {}
        problem = answer.get("error") if isinstance(answer.get("error"), dict) else {}
        if status in (200, 201) and isinstance(answer.get("id"), str):
            return answer["id"]
        if status == 409 and problem.get("code") == "duplicate_order":
            return str(problem["shipment_id"])  # it has the order already: that is a yes
        if status >= 500 or status in (401, 403, 408, 409, 429) or status < 400:
            # 401/403: our key is being rotated or refused; people fix that, orders wait.
            raise WarehouseUnavailable(f"warehouse answered {status} {problem.get('code', '')}")
        raise Refused(status, str(problem.get("code", "refused")), str(problem.get("message", "")))
