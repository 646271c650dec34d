"""The user service against the real data tier: every endpoint's happy path and bad input,
token expiry and tampering, session invalidation, throttling and password resets."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.kit.auth import Tokens
from services.mailsink import MailSink
from services.user.app import UserSettings, init_app
from stacks.local.data_tier import DataTier
from tests.services.mail import mails_to, token_of

PASSWORD = "correct-horse-42"


@pytest.fixture
async def client(aiohttp_client, settings_for) -> TestClient:
    settings = settings_for(UserSettings, "user", BCRYPT_ROUNDS="4", LOGIN_ATTEMPTS_PER_ACCOUNT="3")
    return await aiohttp_client(init_app(settings))


def email() -> str:
    return f"shopper-{uuid.uuid4().hex[:10]}@example.com"


async def register(client: TestClient, address: str, password: str = PASSWORD) -> dict[str, Any]:
    """Register, then the account's profile (the registration's answer names no account)."""
    response = await client.post(
        "/api/users/register", json={"email": address, "password": password}
    )
    assert response.status == 202, await response.text()
    tokens = await login(client, address, password)
    me = await client.get("/api/users/me", headers=bearer(tokens["access_token"]))
    assert me.status == 200
    return await me.json()


async def login(client: TestClient, address: str, password: str = PASSWORD) -> dict[str, Any]:
    response = await client.post("/api/users/login", json={"email": address, "password": password})
    assert response.status == 200, await response.text()
    return await response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def fields(response) -> list[str]:  # type: ignore[no-untyped-def]
    return [f["field"] for f in (await response.json())["fields"]]


async def test_register_then_read_the_profile(client: TestClient) -> None:
    address = email()
    created = await register(client, address)
    assert created["email"] == address and created["role"] == "customer"
    assert "password" not in str(created)
    tokens = await login(client, address.upper())  # email is case-insensitive
    me = await client.get("/api/users/me", headers=bearer(tokens["access_token"]))
    assert me.status == 200
    assert (await me.json())["id"] == created["id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-email", "password": PASSWORD}, "body.email"),
        ({"email": "a@example.com", "password": "short1"}, "body.password"),
        ({"email": "a@example.com", "password": "onlyletterslong"}, "body.password"),
        (
            {"email": "a@example.com", "password": "x1" * 40},
            "body.password",
        ),  # over bcrypt's 72 bytes
        ({"password": PASSWORD}, "body.email"),
        (
            {"email": "a@example.com", "password": PASSWORD, "full_name": "x" * 201},
            "body.full_name",
        ),
    ],
)
async def test_bad_registrations_name_the_field_and_write_nothing(
    client: TestClient, platform: DataTier, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/users/register", json=body)
    assert response.status == 422
    assert field in await fields(response)
    connection = await asyncpg.connect(platform.postgres.primary_dsn)
    try:
        assert (
            await connection.fetchval("SELECT count(*) FROM users WHERE email = 'a@example.com'")
            == 0
        )
    finally:
        await connection.close()


async def test_wrong_password_then_throttled(client: TestClient) -> None:
    address = email()
    await register(client, address)
    for _ in range(3):
        wrong = await client.post(
            "/api/users/login", json={"email": address, "password": "wrong-password-1"}
        )
        assert wrong.status == 401
    blocked = await client.post("/api/users/login", json={"email": address, "password": PASSWORD})
    assert blocked.status == 429
    assert int(blocked.headers["Retry-After"]) > 0
    unknown = await client.post("/api/users/login", json={"email": email(), "password": PASSWORD})
    assert unknown.status == 401  # another account is not blocked by this one's failures


async def test_tampered_expired_and_wrong_type_tokens_are_refused(
    client: TestClient, tokens: Tokens, platform: DataTier
) -> None:
    address = email()
    await register(client, address)
    pair = await login(client, address)
    access = pair["access_token"]
    head, payload, signature = access.split(".")
    tampered = f"{head}.{payload}.{signature[:-4]}AAAA"
    assert (await client.get("/api/users/me", headers=bearer(tampered))).status == 401
    claims = Tokens.from_file(platform.jwt_secret_file)
    expired = claims.issue("1", "customer", "sid", now=datetime.now(UTC) - timedelta(hours=1))
    response = await client.get("/api/users/me", headers=bearer(expired))
    assert response.status == 401 and "expired" in (await response.json())["message"]
    assert (await client.get("/api/users/me")).status == 401
    assert (await client.get("/api/users/me", headers={"Authorization": "Basic abc"})).status == 401


async def test_refresh_rotates_and_logout_ends_the_session(client: TestClient) -> None:
    address = email()
    await register(client, address)
    pair = await login(client, address)
    rotated = await client.post("/api/users/refresh", json={"refresh_token": pair["refresh_token"]})
    assert rotated.status == 200
    new_pair = await rotated.json()
    reused = await client.post("/api/users/refresh", json={"refresh_token": pair["refresh_token"]})
    assert reused.status == 401  # a used refresh token is worthless
    assert (
        await client.post("/api/users/logout", headers=bearer(new_pair["access_token"]))
    ).status == 204
    assert (
        await client.get("/api/users/me", headers=bearer(new_pair["access_token"]))
    ).status == 401
    after = await client.post(
        "/api/users/refresh", json={"refresh_token": new_pair["refresh_token"]}
    )
    assert after.status == 401


async def test_sessions_live_24_hours_in_redis(client: TestClient, platform: DataTier) -> None:
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    address = email()
    user = await register(client, address)
    await login(client, address)
    redis = RedisCluster(
        startup_nodes=[ClusterNode(*n.rsplit(":", 1)) for n in platform.redis.nodes],
        password=platform.redis.password,
    )
    try:
        sids = await redis.smembers(f"sessions:{{{user['id']}}}")
        assert len(sids) == 2  # the one `register` made to read the profile, and this one
        ttl = await redis.ttl(f"session:{{{user['id']}}}:{next(iter(sids)).decode()}")
        assert 24 * 3600 - 60 < ttl <= 24 * 3600
    finally:
        await redis.aclose()


async def test_password_change_ends_every_session(client: TestClient) -> None:
    address = email()
    await register(client, address)
    first, second = await login(client, address), await login(client, address)
    wrong = await client.post(
        "/api/users/me/password",
        json={"current_password": "not-it-12345", "new_password": "brand-new-pass-7"},
        headers=bearer(first["access_token"]),
    )
    assert wrong.status == 401
    changed = await client.post(
        "/api/users/me/password",
        json={"current_password": PASSWORD, "new_password": "brand-new-pass-7"},
        headers=bearer(first["access_token"]),
    )
    assert changed.status == 204
    for pair in (first, second):
        assert (
            await client.get("/api/users/me", headers=bearer(pair["access_token"]))
        ).status == 401
    assert (
        await client.post("/api/users/login", json={"email": address, "password": PASSWORD})
    ).status == 401
    await login(client, address, "brand-new-pass-7")


async def test_password_reset_is_single_use_and_expires(
    aiohttp_client, settings_for, mail_sink: MailSink, mail_env, outbox_relay, platform: DataTier
) -> None:
    client = await aiohttp_client(
        init_app(settings_for(UserSettings, "user", BCRYPT_ROUNDS="4", **mail_env))
    )
    address = email()
    user = await register(client, address)
    session = await login(client, address)
    assert (await client.post("/api/users/password-reset", json={"email": address})).status == 202
    assert (
        await client.post("/api/users/password-reset", json={"email": email()})
    ).status == 202  # no leak
    token = token_of((await mails_to(mail_sink, address))[0])
    confirm = {"token": token, "new_password": "after-reset-99"}
    assert (await client.post("/api/users/password-reset/confirm", json=confirm)).status == 204
    again = await client.post("/api/users/password-reset/confirm", json=confirm)
    assert again.status == 400  # single use
    me = await client.get("/api/users/me", headers=bearer(session["access_token"]))
    assert me.status == 401  # every session ended
    await login(client, address, "after-reset-99")

    await client.post("/api/users/password-reset", json={"email": address})
    late = token_of((await mails_to(mail_sink, address, count=2))[1])
    connection = await asyncpg.connect(platform.postgres.primary_dsn)
    try:
        await connection.execute(
            "UPDATE password_resets SET expires_at = now() - interval '1 min' WHERE user_id = $1",
            user["id"],
        )
    finally:
        await connection.close()
    expired = await client.post(
        "/api/users/password-reset/confirm",
        json={"token": late, "new_password": "too-late-123"},
    )
    assert expired.status == 400


async def test_profile_update(client: TestClient) -> None:
    address = email()
    await register(client, address)
    pair = await login(client, address)
    updated = await client.patch(
        "/api/users/me", json={"full_name": "Ada Shopper"}, headers=bearer(pair["access_token"])
    )
    assert updated.status == 200 and (await updated.json())["full_name"] == "Ada Shopper"
    bad = await client.patch(
        "/api/users/me", json={"full_name": 42}, headers=bearer(pair["access_token"])
    )
    assert bad.status == 422 and await fields(bad) == ["body.full_name"]


async def test_readiness_and_openapi(client: TestClient) -> None:
    assert (await client.get("/readyz")).status == 200
    document = await (await client.get("/openapi.json")).json()
    assert {"/api/users/register", "/api/users/login", "/api/users/me"} <= set(document["paths"])
