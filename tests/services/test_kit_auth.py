"""JWTs (issue, verify, every refusal with its reason), routes requiring a user or a role,
and bcrypt off the event loop with its 72-byte limit."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from services.kit.auth import PasswordHasher, ServiceToken, Tokens
from services.kit.errors import ServiceUnavailable, Unauthorized, ValidationFailed
from tests.services.kit_example import SECRET, build_app, token

Client = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]
TOKENS = Tokens(SECRET)


def refusal(token_text: str, **options: str) -> str:
    with pytest.raises(Unauthorized) as refused:
        TOKENS.verify(token_text, **options)  # type: ignore[arg-type]
    assert refused.value.status == 401
    return refused.value.message


def test_an_access_token_carries_the_session_and_verifies() -> None:
    issued = datetime.now(UTC).replace(microsecond=0)
    text = TOKENS.issue("user-1", "admin", "session-9", now=issued)
    principal = TOKENS.verify(text)
    assert (principal.user_id, principal.role, principal.session_id) == (
        "user-1",
        "admin",
        "session-9",
    )
    assert principal.expires_at == issued + timedelta(minutes=15)
    claims = jwt.decode(text, SECRET, algorithms=["HS256"])
    assert set(claims) == {"sub", "role", "sid", "type", "jti", "iat", "exp"}
    assert claims["type"] == "access"
    assert TOKENS.verify(token()).token_id != TOKENS.verify(token()).token_id  # jti: unique


def test_an_expired_token_is_refused_without_leeway() -> None:
    past = datetime.now(UTC) - timedelta(minutes=15, seconds=1)
    assert refusal(token(now=past)) == "token expired"


def test_a_remembered_token_still_expires_and_keeps_its_type() -> None:
    tokens = Tokens(SECRET)
    short = tokens.issue("user-1", "customer", "s-1", ttl=timedelta(seconds=2))
    assert tokens.verify(short).user_id == "user-1"
    assert tokens.verify(short).user_id == "user-1"  # from memory
    with pytest.raises(Unauthorized, match="wrong token type"):
        tokens.verify(short, token_type="refresh")  # remembered per type, never across
    time.sleep(2.05)  # exp is whole seconds: expired by now, valid for >= 1 s before
    with pytest.raises(Unauthorized, match="token expired"):
        tokens.verify(short)


def test_a_service_token_is_reused_for_half_its_life_then_renewed() -> None:
    tokens = Tokens(SECRET, access_ttl=timedelta(minutes=10))
    own = ServiceToken(tokens, "order")
    start = datetime.now(UTC) - timedelta(minutes=5)  # renewed below at about now
    first = own(start)
    assert own(start + timedelta(minutes=4, seconds=59)) == first
    principal = tokens.verify(first)
    assert (principal.user_id, principal.role) == ("order", "service")
    renewed = own(start + timedelta(minutes=5))
    assert renewed != first
    # Each token its own session: revoking a leaked one leaves the next one working.
    assert tokens.verify(renewed).session_id != principal.session_id
    own.renew()
    assert own(start + timedelta(minutes=5, seconds=1)) != renewed
    # The renewed token outlives the first by the time that passed: a caller never holds one
    # with less than half its lifetime left.
    assert tokens.verify(renewed).expires_at - principal.expires_at >= timedelta(minutes=4)


def test_a_tampered_token_is_refused_for_its_signature() -> None:
    header, payload, signature = token(role="customer").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["role"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert refusal(f"{header}.{forged}.{signature}") == "token signature is invalid"
    assert refusal(token(secret=b"another secret of 32 bytes or so!")) == (
        "token signature is invalid"
    )


def test_unsigned_and_malformed_tokens_are_refused() -> None:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "u", "role": "admin", "sid": "s", "type": "access"}
    claims |= {"jti": "j", "iat": now, "exp": now + 60}
    unsigned = jwt.encode(claims, key="", algorithm="none")
    assert refusal(unsigned) == "token algorithm is not HS256"
    assert refusal("not-a-token") == "token is malformed"
    assert refusal("a.b.c") == "token is malformed"
    del claims["sid"]
    assert refusal(jwt.encode(claims, SECRET, algorithm="HS256")) == (
        "token is malformed: no 'sid' claim"
    )


def test_a_refresh_token_does_not_open_the_api() -> None:
    assert refusal(token(token_type="refresh")) == (
        "wrong token type: expected access, got 'refresh'"
    )
    assert TOKENS.verify(token(token_type="refresh"), token_type="refresh").user_id == "user-1"
    assert refusal(token(), token_type="refresh") == (
        "wrong token type: expected refresh, got 'access'"
    )


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Tokens(b"short")


# --- routes ---------------------------------------------------------------------------------


async def test_routes_ask_for_a_user_and_a_role(
    aiohttp_client: Client, tmp_path: Path, redis_env: dict[str, str]
) -> None:
    client = await aiohttp_client(build_app(tmp_path, redis=redis_env))

    missing = await client.get("/api/me")
    assert missing.status == 401
    assert (await missing.json())["message"] == "missing bearer token"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")

    past = datetime.now(UTC) - timedelta(hours=1)
    expired = await client.get("/api/me", headers={"Authorization": f"Bearer {token(now=past)}"})
    assert expired.status == 401
    assert (await expired.json())["message"] == "token expired"
    assert 'error_description="token expired"' in expired.headers["WWW-Authenticate"]

    customer = {"Authorization": f"Bearer {token('customer')}"}
    me = await client.get("/api/me", headers=customer)
    assert me.status == 200
    assert await me.json() == {"user_id": "user-1", "role": "customer"}

    forbidden = await client.delete("/api/orders/1", headers=customer)
    assert forbidden.status == 403
    assert (await forbidden.json())["error"] == "forbidden"

    admin = {"Authorization": f"bearer {token('admin')}"}
    cancelled = await client.delete("/api/orders/1", headers=admin)
    assert cancelled.status == 204
    assert await cancelled.read() == b""
    conflict = await client.delete("/api/orders/409", headers=admin)
    assert conflict.status == 409


async def test_authentication_comes_before_validation(
    aiohttp_client: Client, tmp_path: Path
) -> None:
    client = await aiohttp_client(build_app(tmp_path))
    response = await client.delete("/api/orders/not-a-number")
    assert response.status == 401


# --- passwords ------------------------------------------------------------------------------


async def test_hashing_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    real = bcrypt.hashpw

    def recording(password: bytes, salt: bytes) -> bytes:
        threads.append(threading.get_ident())
        return real(password, salt)

    monkeypatch.setattr(bcrypt, "hashpw", recording)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    hasher = PasswordHasher(rounds=11)  # a real hash of ~0.1 s
    threads.clear()  # its dummy hash, made at construction: only what `hash` does counts
    ticking = asyncio.create_task(ticker())
    started = time.perf_counter()
    hashed = await hasher.hash("correct horse battery staple")
    elapsed = time.perf_counter() - started
    ticking.cancel()
    assert threads and threading.get_ident() not in threads
    # The loop kept serving other work while the hash was computed (about every 5 ms).
    assert ticks >= elapsed / 0.005 / 2
    assert await hasher.verify("correct horse battery staple", hashed)
    assert not await hasher.verify("wrong horse", hashed)


async def test_verifying_for_an_unknown_user_spends_a_hash_and_fails() -> None:
    hasher = PasswordHasher(rounds=4)
    assert await hasher.verify("whatever password", None) is False


async def test_passwords_over_72_bytes_are_validation_errors() -> None:
    hasher = PasswordHasher(rounds=4)
    fits = "é" * 36  # 72 bytes in UTF-8
    assert await hasher.verify(fits, await hasher.hash(fits))
    with pytest.raises(ValidationFailed) as refused:
        await hasher.hash("é" * 37)  # 37 characters, 74 bytes
    assert refused.value.status == 422
    assert [p.field for p in refused.value.fields] == ["body.password"]
    assert "at most 72 bytes" in refused.value.fields[0].problem
    with pytest.raises(ValidationFailed):
        await hasher.verify("x" * 73, await hasher.hash(fits), field="body.current_password")


async def test_registration_refuses_a_long_password_with_422_not_500(
    aiohttp_client: Client, tmp_path: Path
) -> None:
    client = await aiohttp_client(build_app(tmp_path))
    too_long = await client.post("/api/register", json={"email": "a@b.c", "password": "x" * 73})
    assert too_long.status == 422
    (problem,) = (await too_long.json())["fields"]
    assert problem["field"] == "body.password"
    assert "72 bytes" in problem["problem"]
    assert "xxxx" not in await too_long.text()  # the input is never echoed

    created = await client.post("/api/register", json={"email": "a@b.c", "password": "x" * 72})
    assert created.status == 201
    assert created.headers["Location"] == "/api/me"
    assert bcrypt.checkpw(b"x" * 72, (await created.json())["password_hash"].encode())


async def test_hashing_work_is_bounded_with_a_fast_503() -> None:
    """48 concurrent logins once queued past the gateway's timeout for everyone: now the work
    beyond the bound is refused at once, and what was admitted still completes."""
    hasher = PasswordHasher(rounds=10, pending_per_core=1)  # a hash: ~60 ms here
    hashed = await hasher.hash("correct horse battery staple")
    calls = [
        asyncio.create_task(hasher.verify("correct horse battery staple", hashed))
        for _ in range(48)
    ]
    await asyncio.sleep(0.01)  # well before any admitted hash can finish
    refused = [call for call in calls if call.done()]
    assert len(refused) == 48 - hasher.max_pending
    error = refused[0].exception()
    assert isinstance(error, ServiceUnavailable)
    response = error.response()
    assert response.status == 503 and response.headers["Retry-After"] == "1"
    admitted = [call for call in calls if call not in refused]
    assert await asyncio.gather(*admitted) == [True] * hasher.max_pending
    assert hasher.pending == 0
    assert await hasher.verify("correct horse battery staple", hashed)  # serving again


def test_issued_at_is_kept_to_the_millisecond() -> None:
    """A token issued just after a revocation must outlive it, also within the same second."""
    issued = datetime.now(UTC)
    principal = TOKENS.verify(TOKENS.issue("user-1", "customer", "s-1", now=issued))
    assert abs(principal.issued_at - issued.timestamp()) < 0.001


def test_access_tokens_cannot_outlive_the_revocations() -> None:
    with pytest.raises(ValueError, match="at most"):
        Tokens(SECRET, access_ttl=timedelta(minutes=61))
