"""A stand-in for the warehouse (the fulfilment partner), shipped so the platform runs and is
tested with no partner account:

    python -m services.order.warehouse_simulator --port 12113 [--api-key KEY]

Its API, JSON over HTTPS with `Authorization: Bearer <api key>` (`--api-key`, default
`sim-secret`) and idempotency by `Idempotency-Key`:

    POST /v1/shipments   {"order_reference": "order-42",
                          "lines": [{"sku": "SKU-1", "quantity": 2}, ...]}
                         -> 201 {"id": "shp_...", "status": "accepted", "order_reference",
                                 "lines", "created_at"}

An order reference is shipped once: a second shipment for it under another key answers 409
`duplicate_order` with the shipment it already has (`shipment_id`). A line whose SKU contains
`UNSHIPPABLE` (in any case) is refused with 422 `unshippable` (a hazardous or oversized item,
say), as is a body that is not a shipment (422 `invalid_shipment`, naming the field).

    GET  /_sim/shipments   every shipment accepted, with the idempotency key it came with

and the behaviours, the request log and `/_sim/reset` of every simulator (services.kit.simulator).
"""

from __future__ import annotations

import argparse
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.kit.simulator import Answer, Json, Operation, Simulator

DEFAULT_API_KEY = "sim-secret"


class Line(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=10_000)


class ShipmentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order_reference: str = Field(min_length=1, max_length=128)
    lines: list[Line] = Field(min_length=1, max_length=500)


@dataclass
class Shipment:
    id: str
    order_reference: str
    lines: list[dict[str, object]]
    idempotency_key: str | None
    created_at: str
    status: str = "accepted"

    def view(self) -> Json:
        view = asdict(self)
        del view["idempotency_key"]
        return view


class WarehouseSimulator(Simulator):
    def __init__(self, *, api_key: str = DEFAULT_API_KEY, seed: int | None = None) -> None:
        super().__init__(api_key=api_key, seed=seed)
        self.shipments: dict[str, Shipment] = {}  # by order reference

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/_sim/shipments", self.list_shipments)
        return app

    def operations(self) -> Mapping[str, Operation]:
        return {"/v1/shipments": self.create_shipment}

    async def list_shipments(self, _request: web.Request) -> web.Response:
        return web.json_response({"shipments": [asdict(s) for s in self.shipments.values()]})

    async def reset(self, request: web.Request) -> web.Response:
        self.shipments.clear()
        return await super().reset(request)

    def create_shipment(self, body: Json, _match: Mapping[str, str], key: str | None) -> Answer:
        try:
            wanted = ShipmentRequest.model_validate(body)
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "body"
            return self.error(422, "invalid_shipment", first["msg"], field=field)
        unshippable = [line.sku for line in wanted.lines if "UNSHIPPABLE" in line.sku.upper()]
        if unshippable:
            return self.error(
                422, "unshippable", f"cannot ship: {', '.join(unshippable)}", skus=unshippable
            )
        known = self.shipments.get(wanted.order_reference)
        if known is not None:
            return self.error(
                409,
                "duplicate_order",
                f"{wanted.order_reference} is already shipment {known.id}",
                shipment_id=known.id,
            )
        shipment = Shipment(
            id=f"shp_{secrets.token_hex(8)}",
            order_reference=wanted.order_reference,
            lines=[line.model_dump() for line in wanted.lines],
            idempotency_key=key,
            created_at=datetime.now(UTC).isoformat(),
        )
        self.shipments[shipment.order_reference] = shipment
        return 201, shipment.view()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--seed", type=int, default=None, help="for `flaky`: repeatable draws")
    args = parser.parse_args(argv)
    simulator = WarehouseSimulator(api_key=args.api_key, seed=args.seed)
    web.run_app(simulator.app(), host=args.host, port=args.port, shutdown_timeout=1.0)


if __name__ == "__main__":
    main()
