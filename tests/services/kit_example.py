"""A tiny service built with the kit, for the kit's tests: every feature, no real backend."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from aiohttp import web
from pydantic import BaseModel, Field

from services.kit import backends
from services.kit.api import Api, json_response
from services.kit.app import CLIENT_MAX_SIZE, create_app
from services.kit.auth import Password, PasswordHasher, Principal, Tokens, TokenType
from services.kit.errors import Conflict, NotFound, TooManyRequests
from services.kit.settings import Settings

SECRET = b"s" * 32
SECRET_LEAK = "password=hunter2 at db.internal:5432"  # must never reach a client


class Item(BaseModel):
    sku: str = Field(min_length=1, max_length=32)
    quantity: int = Field(gt=0, le=100)


class NewOrder(BaseModel):
    items: list[Item] = Field(min_length=1)
    note: str | None = Field(default=None, max_length=200)


class Order(BaseModel):
    """An order as the service answers it."""

    id: int
    items: list[Item]
    total_quantity: int


class OrderPath(BaseModel):
    order_id: int = Field(gt=0)


class OrderQuery(BaseModel):
    limit: int = Field(default=10, ge=1, le=50, description="At most this many orders")
    sku: list[str] = Field(default_factory=list, description="Only orders with these SKUs")


class Registration(BaseModel):
    email: str
    password: Password


class Registered(BaseModel):
    email: str
    password_hash: str


class Me(BaseModel):
    user_id: str
    role: str


api = Api("example", version="0.1.0", description="The kit's test service")
HASHER = web.AppKey("hasher", PasswordHasher)


@api.post("/api/orders", body=NewOrder, response=Order, status=201, tags=["orders"])
async def place_order(request: web.Request, body: NewOrder) -> Order:
    """Place an order.

    Quantities add up into total_quantity."""
    return Order(id=1, items=body.items, total_quantity=sum(i.quantity for i in body.items))


@api.get("/api/orders/{order_id}", path_params=OrderPath, response=Order, errors=[NotFound])
async def get_order(request: web.Request, path_params: OrderPath) -> Order:
    """Get one order."""
    if path_params.order_id == 404:
        raise NotFound(f"order {path_params.order_id} does not exist")
    return Order(id=path_params.order_id, items=[Item(sku="a", quantity=1)], total_quantity=1)


@api.get("/api/orders", query=OrderQuery, response=list[Order])
async def list_orders(request: web.Request, query: OrderQuery) -> list[Order]:
    """List orders."""
    skus = query.sku or ["a"]
    return [
        Order(id=n, items=[Item(sku=s, quantity=1) for s in skus], total_quantity=len(skus))
        for n in range(1, query.limit + 1)
    ]


@api.delete("/api/orders/{order_id}", path_params=OrderPath, auth="admin", errors=[Conflict])
async def cancel_order(request: web.Request, path_params: OrderPath, user: Principal) -> None:
    """Cancel an order (administrators only)."""
    if path_params.order_id == 409:
        raise Conflict("the order has shipped")


@api.get("/api/me", response=Me, auth=True)
async def me(request: web.Request, user: Principal) -> Me:
    """Who am I."""
    return Me(user_id=user.user_id, role=user.role)


@api.post("/api/register", body=Registration, response=Registered, status=201)
async def register(request: web.Request, body: Registration) -> web.Response:
    """Register (answers with a Location header)."""
    hashed = await request.app[HASHER].hash(body.password)
    answer = Registered(email=body.email, password_hash=hashed)
    return json_response(answer, status=201, headers={"Location": "/api/me"})


@api.get("/api/boom", response=Order)
async def boom(request: web.Request) -> Order:
    raise RuntimeError(SECRET_LEAK)


@api.get("/api/bad-answer", response=Order)
async def bad_answer(request: web.Request) -> Order:
    return {"id": "not a number"}  # type: ignore[return-value]  # a handler bug: 500


@api.get("/api/busy")
async def busy(request: web.Request) -> None:
    raise TooManyRequests(retry_after_s=7)


@api.get("/api/slow")
async def slow(request: web.Request) -> None:
    await asyncio.sleep(float(request.query.get("s", "0.5")))


@dataclass
class FakeDependency:
    """A test double of the Dependency protocol."""

    name: str
    events: list[str] = field(default_factory=list)
    healthy: bool = True
    hangs: bool = False

    async def start(self) -> None:
        self.events.append(f"start {self.name}")

    async def close(self) -> None:
        self.events.append(f"close {self.name}")

    async def check(self) -> None:
        if self.hangs:
            await asyncio.sleep(30)
        if not self.healthy:
            raise ConnectionRefusedError(SECRET_LEAK)


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    secret = tmp_path / "jwt-secret"
    secret.write_bytes(SECRET + b"\n")
    return {
        "SERVICE_NAME": "example",
        "ENVIRONMENT": "test",
        "PORT": "8080",
        "JWT_SECRET_FILE": str(secret),
        "ACCESS_LOG_SAMPLE": "1",  # every request in the log, for the tests that read it
        **extra,
    }


# Where the example's revocations live. Tests that authenticate pass the session's real Redis
# (the `redis_env` fixture); the others never read a revocation, and one that did would fail
# closed (503), never pass unchecked. Nothing listens on the discard port.
NO_REDIS = {"REDIS_NODES": "127.0.0.1:9"}


def build_app(
    tmp_path: Path,
    dependencies: Sequence[FakeDependency] = (),
    *,
    redis: Mapping[str, str] = NO_REDIS,
    readiness_timeout_s: float = 0.2,
    client_max_size: int = CLIENT_MAX_SIZE,
) -> web.Application:
    settings = Settings.from_env(environment(tmp_path, **redis))
    app = create_app(
        settings,
        api,
        dependencies,
        revocations=backends.revocations(settings),
        readiness_timeout_s=readiness_timeout_s,
        client_max_size=client_max_size,
    )
    app[HASHER] = PasswordHasher(rounds=4)
    return app


def token(
    role: str = "customer",
    *,
    token_type: TokenType = "access",
    now: datetime | None = None,
    secret: bytes = SECRET,
) -> str:
    return Tokens(secret).issue("user-1", role, "session-1", token_type=token_type, now=now)
