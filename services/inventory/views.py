"""The inventory service's API: /api/inventory/..."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, Field

from services.inventory.feed import StockFeed
from services.inventory.stock import InsufficientStock, Level, Stock, UnknownSku, VersionMismatch
from services.kit.api import Api, json_response
from services.kit.auth import Principal
from services.kit.errors import ApiError, Conflict, NotFound, ValidationFailed
from services.kit.streams import EventStream

api = Api("inventory", version="1.0.0", description="Stock, reservations, audit trail, live feed")

STOCK = web.AppKey("stock", Stock)
FEED = web.AppKey("feed", StockFeed)

Sku = Annotated[str, Field(pattern=r"^[A-Z0-9][A-Z0-9-]{1,63}$")]
SKU = r"{sku:[A-Z0-9][A-Z0-9-]*}"  # never matches /feed or /reservations
# Internal callers (the order service's saga) act with this role; administrators may too.
RESERVERS = ("service", "admin")


class PreconditionFailed(ApiError):
    status, code, default_message = 412, "precondition_failed", "the stock changed meanwhile"


class PreconditionRequired(ApiError):
    status, code, default_message = 428, "precondition_required", "send If-Match with the version"


class StockLevel(BaseModel):
    sku: str
    available: int
    reserved: int
    version: int


class SkuPath(BaseModel):
    sku: Sku


class OrderPath(BaseModel):
    order_id: int = Field(gt=0, lt=2**63)


class StockChange(BaseModel):
    available: int = Field(ge=0, le=10_000_000)


class Item(BaseModel):
    sku: Sku
    quantity: int = Field(gt=0, le=1000)


class ReservationRequest(BaseModel):
    order_id: int = Field(gt=0, lt=2**63)
    items: list[Item] = Field(min_length=1, max_length=100)
    ttl_seconds: int = Field(default=900, ge=10, le=86_400)


class Reservation(BaseModel):
    id: str
    sku: str
    quantity: int
    status: str
    expires_at: str


class StockEvent(BaseModel):
    id: int
    kind: str
    delta: int
    available_after: int
    reference: str | None
    created_at: str


class Audit(BaseModel):
    sku: str
    available: int
    rebuilt_from_events: int
    consistent: bool


class FeedQuery(BaseModel):
    sku: list[Sku] = Field(default_factory=list, max_length=50, description="only these SKUs")


def _etag(level: Level) -> str:
    return f'"{level.version}"'


async def _publish(request: web.Request, levels: list[Level]) -> None:
    for level in levels:
        await request.app[FEED].publish(level)


@api.get(f"/api/inventory/{SKU}", path_params=SkuPath, response=StockLevel, errors=[NotFound])
async def stock_level(request: web.Request, path_params: SkuPath) -> web.Response:
    """A SKU's stock; the ETag is its version, for If-Match on changes."""
    level = await request.app[STOCK].level(path_params.sku, fresh=True)
    if level is None:
        raise NotFound(f"no stock for {path_params.sku}")
    return json_response(StockLevel(**level.as_dict()), headers={"ETag": _etag(level)})


@api.put(
    f"/api/inventory/{SKU}",
    path_params=SkuPath,
    body=StockChange,
    response=StockLevel,
    auth="admin",
    errors=[NotFound, PreconditionFailed, PreconditionRequired],
)
async def set_stock(
    request: web.Request, path_params: SkuPath, body: StockChange, user: Principal
) -> web.Response:
    """Set a SKU's available stock (administrators), only if it is unchanged since read.

    Send `If-Match` with the ETag of the read: a concurrent change answers 412."""
    match = request.headers.get("If-Match", "").strip().strip('"')
    if not match:
        raise PreconditionRequired()
    # ASCII digits only ("²".isdigit() holds, int("²") fails), and within the bigint version.
    if not (match.isascii() and match.isdigit()) or int(match) >= 2**63:
        raise ValidationFailed.field(
            "header.If-Match", "expected the ETag of a read, a version number"
        )
    try:
        level = await request.app[STOCK].adjust(
            path_params.sku, body.available, int(match), user.user_id
        )
    except UnknownSku:
        raise NotFound(f"no stock for {path_params.sku}") from None
    except VersionMismatch:
        raise PreconditionFailed() from None
    await _publish(request, [level])
    return json_response(StockLevel(**level.as_dict()), headers={"ETag": _etag(level)})


@api.post(
    "/api/inventory/reservations",
    body=ReservationRequest,
    response=list[Reservation],
    status=201,
    auth=RESERVERS,
    errors=[Conflict],
)
async def reserve(
    request: web.Request, body: ReservationRequest, user: Principal
) -> list[Reservation]:
    """Hold stock for an order, all items or none; released by itself when it expires."""
    try:
        held, levels = await request.app[STOCK].reserve(
            body.order_id,
            [(item.sku, item.quantity) for item in body.items],
            timedelta(seconds=body.ttl_seconds),
        )
    except InsufficientStock as error:
        await _publish(request, [error.level])  # keeps the order service's sold-out hint fresh
        raise Conflict(f"not enough stock for {error.sku}") from None
    except UnknownSku as error:
        raise ValidationFailed.field("body.items", f"unknown SKU {error.sku}") from None
    await _publish(request, levels)
    return [Reservation(**r) for r in held]


@api.post("/api/inventory/reservations/{order_id}/commit", path_params=OrderPath, auth=RESERVERS)
async def commit(request: web.Request, path_params: OrderPath, user: Principal) -> None:
    """The order is paid: its reservations become sales (repeating it changes nothing)."""
    await _publish(request, await request.app[STOCK].commit(path_params.order_id))


@api.post("/api/inventory/reservations/{order_id}/release", path_params=OrderPath, auth=RESERVERS)
async def release(request: web.Request, path_params: OrderPath, user: Principal) -> None:
    """Give an order's held stock back (saga compensation; repeating it changes nothing)."""
    await _publish(request, await request.app[STOCK].release(path_params.order_id))


@api.get(
    f"/api/inventory/{SKU}/events", path_params=SkuPath, response=list[StockEvent], auth="admin"
)
async def events(request: web.Request, path_params: SkuPath, user: Principal) -> list[StockEvent]:
    """The SKU's audit trail, newest first: every change, immutable. Admins only: it names
    the orders that bought and the admins who adjusted."""
    return [StockEvent(**e) for e in await request.app[STOCK].events(path_params.sku)]


@api.get(f"/api/inventory/{SKU}/audit", path_params=SkuPath, response=Audit, errors=[NotFound])
async def audit(request: web.Request, path_params: SkuPath) -> Audit:
    """The stock rebuilt from its events, against the stored stock."""
    stock = request.app[STOCK]
    level = await stock.level(path_params.sku, fresh=True)
    if level is None:
        raise NotFound(f"no stock for {path_params.sku}")
    rebuilt = await stock.rebuilt(path_params.sku) or 0
    return Audit(
        sku=level.sku,
        available=level.available,
        rebuilt_from_events=rebuilt,
        consistent=rebuilt == level.available,
    )


@api.get("/api/inventory/feed", query=FeedQuery)
async def feed(request: web.Request, query: FeedQuery) -> web.StreamResponse:
    """Live stock levels as Server-Sent Events (`event: stock`, JSON data), from Redis pub/sub.

    A comment line keeps a quiet stream alive; the stream ends after the feed's lifetime and
    the client (EventSource) reconnects by itself (services/kit/streams.py)."""
    stock_feed = request.app[FEED]
    stream = EventStream(request, lifetime_s=stock_feed.lifetime_s)
    response = await stream.open()
    wanted = set(query.sku)
    async with stock_feed.subscribe() as updates:
        async for level in stream.relay(updates):
            if not wanted or level["sku"] in wanted:
                await stream.send("stock", StockLevel(**level).model_dump_json())
    return response
