"""What the bench's scenarios send: users, tokens and SKUs prepared through the public API,
and the Lua data file the wrk scripts read."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import bcrypt

from bench.target import FLASH_STOCK, HOT_PRODUCTS, PASSWORD, Target, say
from services.kit.db import PRIMARY_HINT


@dataclass
class Prepared:
    nonce: str
    tokens: list[str]
    admin_token: str
    ids: list[int]
    skus: list[str]
    inventory: list[tuple[str, int]]
    categories: list[str]
    terms: list[str]
    flash_sku: str
    emails: list[str] = field(default_factory=list)  # the registered users', admin first
    shopper_tokens: list[str] = field(default_factory=list)
    flash_tokens: list[str] = field(default_factory=list)


async def _json(
    session: aiohttp.ClientSession, method: str, url: str, expect: tuple[int, ...], **kw: Any
) -> Any:
    for attempt in range(5):  # bcrypt on a busy machine can outlast the gateway's timeout
        async with session.request(method, url, **kw) as r:
            body = await r.json(content_type=None)
            if r.status in (502, 503, 504) and attempt < 4:
                await asyncio.sleep(1 + attempt)
                continue
            if r.status not in expect:
                raise RuntimeError(f"{method} {url}: {r.status} {body}")
            return body, r.headers
    raise AssertionError("unreachable")


async def _login(session: aiohttp.ClientSession, gw: str, email: str) -> str:
    body, _ = await _json(
        session,
        "POST",
        f"{gw}/api/users/login",
        (200,),
        json={"email": email, "password": PASSWORD},
    )
    return str(body["access_token"])


async def _users(session: aiohttp.ClientSession, gw: str, emails: list[str]) -> list[str]:
    """Register (bcrypt: ~0.25 s of CPU each) and log in, a few at a time."""
    gate = asyncio.Semaphore(4)

    async def one(email: str) -> str:
        async with gate:
            await _json(
                session,
                "POST",
                f"{gw}/api/users/register",
                (202,),
                json={"email": email, "password": PASSWORD, "full_name": "Bench User"},
            )
            return await _login(session, gw, email)

    return list(await asyncio.gather(*(one(e) for e in emails)))


async def prepare(target: Target, users: int, shopper_count: int) -> Prepared:
    gw = target.gateway
    nonce = uuid.uuid4().hex[:8]
    db = await target.connect()
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        emails = [f"bench-{nonce}-{i}@bench.example.com" for i in range(users)]
        began = time.monotonic()
        tokens = await _users(session, gw, emails)
        say(f"{users} users registered and logged in ({time.monotonic() - began:.1f} s)")
        await db.execute(
            PRIMARY_HINT + "UPDATE users SET role = 'admin' WHERE email = $1", emails[0]
        )
        admin_token = await _login(session, gw, emails[0])
        shoppers = await _shoppers(db, target, nonce, shopper_count)
        cats, _ = await _json(session, "GET", f"{gw}/api/products/categories", (200,))
        categories = [c["slug"] for c in cats if c["products"] > 0 and c["parent"]]
        ids = [r["id"] for r in await db.fetch("SELECT id FROM products WHERE active ORDER BY id")]
        stock = await db.fetch(PRIMARY_HINT + "SELECT sku, version FROM inventory ORDER BY sku")
        names = await db.fetch("SELECT name FROM products ORDER BY id LIMIT 400")
        words = sorted({w.lower() for r in names for w in r["name"].split()[1:3] if len(w) > 3})
        terms = words[:40] + [w[:-1] + w[-1] * 2 for w in words[:10]]  # a few typos
        flash_sku = stock[-1]["sku"]
        inventory = [(r["sku"], int(r["version"])) for r in stock[-1001:-1]]
        skus = [r["sku"] for r in stock[: len(stock) - 1001]]
        # The flash SKU: 100 units, set through the admin API (If-Match on its version).
        _, headers = await _json(session, "GET", f"{gw}/api/inventory/{flash_sku}", (200,))
        await _json(
            session,
            "PUT",
            f"{gw}/api/inventory/{flash_sku}",
            (200,),
            json={"available": FLASH_STOCK},
            headers={"Authorization": f"Bearer {admin_token}", "If-Match": headers["ETag"]},
        )
    await db.close()
    return Prepared(
        nonce=nonce,
        tokens=tokens[1:],
        shopper_tokens=shoppers,
        admin_token=admin_token,
        ids=ids,
        skus=skus,
        inventory=inventory,
        categories=categories,
        terms=terms,
        flash_sku=flash_sku,
        emails=emails,
        flash_tokens=shoppers or tokens[1:],
    )


async def _shoppers(db: asyncpg.Connection, target: Target, nonce: str, count: int) -> list[str]:
    """Many shoppers without ``count`` bcrypt hashes and logins (0.25 s of CPU each): rows
    in ``users`` sharing one hash, and access tokens signed with the platform's key, as login
    issues them. Carts and orders need one user per connection or so: a few dozen users for
    1,000 connections would serialize every cart change on a few rows."""
    if count <= 0:
        return []
    from services.kit.auth import Tokens

    password_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(12)).decode()
    rows = await db.fetch(
        PRIMARY_HINT
        + """INSERT INTO users (email, password_hash, full_name)
           SELECT 'shopper-' || $1 || '-' || g || '@bench.example.com', $2, 'Bench Shopper'
           FROM generate_series(1, $3) AS g RETURNING id""",
        nonce,
        password_hash,
        count,
    )
    tokens = Tokens.from_file(Path(target.state["jwt_secret_file"]))
    return [tokens.issue(str(r["id"]), "customer", f"bench-{nonce}-{r['id']}") for r in rows]


async def stock_versions(target: Target, skus: list[str]) -> list[tuple[str, int]]:
    db = await target.connect()
    try:
        rows = await db.fetch(
            PRIMARY_HINT + "SELECT sku, version FROM inventory WHERE sku = ANY($1) ORDER BY sku",
            skus,
        )
    finally:
        await db.close()
    return [(r["sku"], int(r["version"])) for r in rows]


def _lua(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid Lua string literal here (ASCII)
    if isinstance(value, list | tuple):
        return "{" + ",".join(_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}={_lua(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def write_data(path: Path, p: Prepared, threads: int, attempts: int) -> None:
    data = {
        "nonce": p.nonce,
        "threads": threads,
        "tokens": p.tokens,
        "shopper_tokens": p.shopper_tokens or p.tokens,
        "admin_token": p.admin_token,
        "products": len(p.ids),
        "ids": p.ids,
        "hot_ids": p.ids[:HOT_PRODUCTS],
        "skus": p.skus,
        "inventory": [list(i) for i in p.inventory],
        "categories": p.categories,
        "terms": p.terms,
        "flash_sku": p.flash_sku,
        "flash_tokens": p.flash_tokens,
        "flash_attempts": attempts,
    }
    path.write_text("return " + _lua(data) + "\n")
