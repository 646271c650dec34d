"""The order service's API: /api/orders/... (every route acts for the logged-in shopper)."""

from __future__ import annotations

from typing import Annotated, Literal

from aiohttp import web
from pydantic import AfterValidator, BaseModel, Field

from services.kit.api import Api, json_response
from services.kit.auth import Principal
from services.kit.errors import Conflict, NotFound, ValidationFailed
from services.kit.types import Id, Sku, Timestamp, one_line_per_sku
from services.order.carts import MAX_LINES, Carts
from services.order.orders import KeyReused, Orders, UnknownProducts
from services.order.soldout import SoldOut

api = Api("order", version="1.0.0", description="Carts, orders and order history")

CARTS = web.AppKey("carts", Carts)
ORDERS = web.AppKey("orders", Orders)
SOLD_OUT = web.AppKey("sold_out", SoldOut)

KEY_HEADER = "Idempotency-Key"


class CartLine(BaseModel):
    sku: Sku
    quantity: int = Field(ge=0, le=100, description="0 removes the line")


class Cart(BaseModel):
    items: dict[str, int]


class OrderLine(BaseModel):
    sku: str
    quantity: int
    unit_price_cents: int


class Order(BaseModel):
    id: int
    status: Literal[
        "pending", "stock_reserved", "paid", "confirmed", "shipped", "cancelled", "refunded"
    ]
    total_cents: int
    currency: str
    created_at: str
    updated_at: str
    shipment_id: str | None = Field(
        default=None, description="the warehouse's shipment, once the order is shipped"
    )
    items: list[OrderLine]


class NewOrder(BaseModel):
    """The items to buy; without them, the cart is checked out."""

    items: (
        Annotated[
            list[CartLine],
            Field(min_length=1, max_length=MAX_LINES),
            AfterValidator(one_line_per_sku),
        ]
        | None
    ) = None
    # The payment provider's token for the shopper's card (never the card itself).
    payment_token: str = Field(pattern=r"^tok_[A-Za-z0-9_]{4,64}$")


class OrderPath(BaseModel):
    order_id: Id


class HistoryQuery(BaseModel):
    before: Timestamp | None = Field(default=None, description="orders placed before this time")
    limit: int = Field(default=20, ge=1, le=100)


class SoldOutError(Conflict):
    code, default_message = "sold_out", "sold out"


def _user(user: Principal) -> int:
    return int(user.user_id)


@api.get("/api/orders/cart", response=Cart, auth=True)
async def cart(request: web.Request, user: Principal) -> Cart:
    """The shopper's cart."""
    return Cart(items=await request.app[CARTS].get(_user(user)))


@api.put("/api/orders/cart/items", body=CartLine, response=Cart, auth=True)
async def set_cart_line(request: web.Request, body: CartLine, user: Principal) -> Cart:
    """Set a line's quantity (0 removes it); only a SKU the catalog sells is added."""
    try:
        items = await request.app[CARTS].set_line(_user(user), body.sku, body.quantity)
    except ValueError as error:
        raise ValidationFailed.field("body.sku", str(error)) from None
    return Cart(items=items)


@api.delete("/api/orders/cart", auth=True)
async def clear_cart(request: web.Request, user: Principal) -> None:
    """Empty the cart."""
    await request.app[CARTS].clear(_user(user))


@api.post(
    "/api/orders",
    body=NewOrder,
    response=Order,
    status=201,
    auth=True,
    errors=[Conflict, SoldOutError],
)
async def place_order(request: web.Request, body: NewOrder, user: Principal) -> web.Response:
    """Place an order (send an `Idempotency-Key` header: the same key returns the same order).

    Answers 201 with the new order, or 200 with the order the key already placed (409 naming
    the fields that differ when the key was used for another request); the order starts
    `pending` and the checkout saga moves it on. A SKU with nothing left answers 409
    `sold_out` at once (unless the key already placed an order: that order is the answer)."""
    key = request.headers.get(KEY_HEADER, "")
    if not 8 <= len(key) <= 128 or not key.isascii() or not key.isprintable():
        raise ValidationFailed.field(
            f"header.{KEY_HEADER}", "expected 8 to 128 printable ASCII characters"
        )
    orders, from_cart = request.app[ORDERS], body.items is None
    if body.items is not None:
        items = {line.sku: line.quantity for line in body.items if line.quantity}
    else:
        items = await request.app[CARTS].get(_user(user))
    sold_out = request.app[SOLD_OUT].among(items)
    # Refused at once, writing nothing, unless the key already placed an order: that order is
    # the answer (a retried cart checkout finds the cart the first attempt emptied).
    if (not items or sold_out) and not await orders.key_used(_user(user), key):
        if not items:
            raise ValidationFailed.field("body.items", "nothing to order: the cart is empty")
        raise SoldOutError(f"sold out: {', '.join(sold_out)}")
    try:
        placed = await orders.place(
            _user(user), key, items, body.payment_token, from_cart=from_cart
        )
    except KeyReused as error:
        raise Conflict(
            f"{KEY_HEADER} was already used for another request: it differs in {error}"
        ) from None
    except UnknownProducts as error:
        raise ValidationFailed.field("body.items", f"unknown or inactive SKUs: {error}") from None
    if placed.created and from_cart:
        await request.app[CARTS].check_out(_user(user))
    return json_response(Order(**placed.order), status=201 if placed.created else 200)


@api.get(
    "/api/orders/{order_id:\\d+}",
    path_params=OrderPath,
    response=Order,
    auth=True,
    errors=[NotFound],
)
async def order(request: web.Request, path_params: OrderPath, user: Principal) -> Order:
    """One of the shopper's orders, with its status."""
    found = await request.app[ORDERS].get(_user(user), path_params.order_id)
    if found is None:
        raise NotFound(f"no order {path_params.order_id}")
    return Order(**found)


@api.get("/api/orders", query=HistoryQuery, response=list[Order], auth=True)
async def history(request: web.Request, query: HistoryQuery, user: Principal) -> list[Order]:
    """The shopper's orders, newest first (page with `before` = the last one's created_at)."""
    return [
        Order(**o)
        for o in await request.app[ORDERS].history(_user(user), query.before, query.limit)
    ]
