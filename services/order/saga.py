"""The checkout saga: reserve stock, take the payment, confirm; compensate on failure.

Each step is driven by an event the previous step wrote to the outbox, in the same transaction
as the order's state change:

    order.placed          -> reserve the stock       -> stock_reserved  (or cancelled)
    order.stock_reserved  -> charge the payment      -> paid            (or release, cancelled)
    order.paid            -> commit the reservation  -> confirmed
    order.confirmed       -> hand to the warehouse   -> shipped          (the fulfilment worker)

Every step is idempotent: the calls it makes are keyed by the order (the reservation by order
id, the charge by `checkout-order-<id>`), and a state change only applies from the state it
expects, so a redelivered event, or a worker that crashed between a call and its commit,
repeats nothing.
A step that fails transiently raises: the event stays pending and is redelivered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from services.kit.auth import ServiceToken
from services.kit.db import Database
from services.kit.events import Event
from services.kit.logs import get_logger
from services.kit.resilience import Transient
from services.order.fulfilment import Refused, Warehouse

log = get_logger(__name__)

SAGA_TOPICS = ("order.placed", "order.stock_reserved", "order.paid")
FULFILMENT_TOPICS = ("order.confirmed",)


# A saga step's state change and the event that drives the next one, in one statement (one
# round trip, atomic): $1 order id, $2 its created_at, $3 the status it must be in, $4 the new
# one, $5 the event's topic (NULL: none), $6 its payload. Answers whether the order moved.
MOVE = """
WITH moved AS (
    UPDATE orders SET status = $4, updated_at = now()
     WHERE id = $1 AND created_at = $2 AND status = $3
 RETURNING id
), event AS (
    INSERT INTO outbox (topic, key, payload)
    SELECT $5::text, id::text, $6::jsonb FROM moved WHERE $5::text IS NOT NULL
)
SELECT count(*) > 0 FROM moved
"""

# The warehouse took the order: $1 id, $2 created_at, $3 its shipment id, $4 the
# order.shipped payload. Answers whether the order moved (False: it had already).
SHIP = """
WITH shipped AS (
    UPDATE orders SET status = 'shipped', shipment_id = $3, shipment_error = NULL,
                      updated_at = now()
     WHERE id = $1 AND created_at = $2 AND status = 'confirmed'
 RETURNING id
), event AS (
    INSERT INTO outbox (topic, key, payload)
    SELECT 'order.shipped', id::text, $4::jsonb FROM shipped
)
SELECT count(*) > 0 FROM shipped
"""

# The warehouse refused the order for good: it stays confirmed, with the reason, for people.
REFUSED = """
UPDATE orders SET shipment_error = $3, updated_at = now()
 WHERE id = $1 AND created_at = $2 AND status = 'confirmed'
"""


class Retry(Exception):
    """A peer did not answer usefully: leave the event pending, it will be redelivered."""


@dataclass(frozen=True)
class Peers:
    inventory: str  # base URLs, from INVENTORY_URL / PAYMENT_URL
    payment: str


class Checkout:
    def __init__(
        self,
        db: Database,
        http: aiohttp.ClientSession,
        peers: Peers,
        service_token: ServiceToken,
        warehouse: Warehouse,
        timeout_s: float = 10.0,
    ):
        self.db = db
        self.http = http
        self.peers = peers
        self.warehouse = warehouse
        self.service_token = service_token
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def handle(self, event: Event) -> None:
        step = {
            "order.placed": self.reserve,
            "order.stock_reserved": self.pay,
            "order.paid": self.confirm,
            "order.confirmed": self.ship,
        }[event.topic]
        await step(event.payload)

    # --- the steps ---------------------------------------------------------------------------

    async def reserve(self, order: dict[str, Any]) -> None:
        items = [{"sku": i["sku"], "quantity": i["quantity"]} for i in order["items"]]
        status, answer = await self._call(
            "POST",
            f"{self.peers.inventory}/api/inventory/reservations",
            {"order_id": order["id"], "items": items},
        )
        if status == 201:
            await self._move(order, "pending", "stock_reserved", "order.stock_reserved")
        elif status in (409, 422):  # not enough stock, or an item that no longer exists
            await self._move(
                order, "pending", "cancelled", "order.cancelled", reason=answer.get("message")
            )
        else:
            raise Retry(f"inventory answered {status}")

    async def pay(self, order: dict[str, Any]) -> None:
        body = {
            "order_id": order["id"],
            "user_id": str(order["user_id"]),
            "amount_cents": order["total_cents"],
            "currency": order["currency"],
            "token": order.get("payment_token", ""),
        }
        status, answer = await self._call(
            "POST", f"{self.peers.payment}/api/payments", body, key=f"checkout-order-{order['id']}"
        )
        if status == 201:
            await self._move(order, "stock_reserved", "paid", "order.paid", payment_id=answer["id"])
        elif 400 <= status < 500 and status not in (401, 403, 408, 429):
            # Declined or refused: give the stock back, then close the order.
            await self._release(order)
            await self._move(
                order,
                "stock_reserved",
                "cancelled",
                "order.cancelled",
                reason=answer.get("message"),
            )
        else:
            raise Retry(f"payment answered {status}")

    async def confirm(self, order: dict[str, Any]) -> None:
        status, _ = await self._call(
            "POST", f"{self.peers.inventory}/api/inventory/reservations/{order['id']}/commit"
        )
        if status != 204:
            raise Retry(f"inventory answered {status} to the commit")
        await self._move(order, "paid", "confirmed", "order.confirmed")

    async def ship(self, order: dict[str, Any]) -> None:
        """Fulfilment: hand the confirmed order to the warehouse; `shipped` once it took it.
        Idempotent per order (services.order.fulfilment): a redelivered event, or a worker
        that crashed after the handover, gets the same shipment back."""
        created_at = datetime.fromisoformat(order["created_at"])
        try:
            shipment = await self.warehouse.hand_over(order)
        except Refused as refusal:
            await self.db.execute(REFUSED, order["id"], created_at, str(refusal))
            log.error("warehouse refused the order", order=order["id"], code=refusal.code)
            return
        except Transient as error:
            raise Retry(f"warehouse: {error}") from error
        payload = {**order, "status": "shipped", "shipment_id": shipment}
        if await self.db.write_fetchval(
            SHIP, order["id"], created_at, shipment, json.dumps(payload)
        ):
            log.info("order moved", order=order["id"], status="shipped", shipment_id=shipment)

    # --- helpers -----------------------------------------------------------------------------

    async def _release(self, order: dict[str, Any]) -> None:
        status, _ = await self._call(
            "POST", f"{self.peers.inventory}/api/inventory/reservations/{order['id']}/release"
        )
        if status != 204:
            raise Retry(f"inventory answered {status} to the release")

    async def _move(
        self, order: dict[str, Any], expected: str, new: str, topic: str | None, **extra: Any
    ) -> bool:
        """Move the order from `expected` to `new` and write `topic` with it, atomically (one
        statement); a no-op when it has already moved (a redelivered event)."""
        moved = await self.db.write_fetchval(
            MOVE,
            order["id"],
            datetime.fromisoformat(order["created_at"]),
            expected,
            new,
            topic,
            json.dumps({**order, "status": new, **extra}),
        )
        if moved:
            log.info("order moved", order=order["id"], status=new, **extra)
        return bool(moved)

    async def _call(
        self, method: str, url: str, body: dict[str, Any] | None = None, key: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.service_token()}"}
        if key:
            headers["Idempotency-Key"] = key
        try:
            async with self.http.request(
                method, url, json=body, headers=headers, timeout=self.timeout
            ) as response:
                answer = (
                    await response.json() if response.content_type == "application/json" else {}
                )
                if response.status == 401:  # revoked (or expired): the retry carries a new one
                    self.service_token.renew()
                return response.status, answer
        except (aiohttp.ClientError, TimeoutError) as error:
            raise Retry(f"{url}: {error}") from error
