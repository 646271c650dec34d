"""The user service attacked the way issue 20 found it open: account enumeration by answer
and by time, throttles escaped by spelling an address another way or by naming another
client address, and bcrypt work spent for nothing. Each test makes the attack and checks
that it gets nothing."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.user.accounts import normalize_email
from services.user.app import UserSettings, init_app
from stacks.local.data_tier import DataTier

PASSWORD = "correct-horse-42"
WRONG = "wrong-password-1"


def address(local: str = "shopper") -> str:
    return f"{local}-{uuid.uuid4().hex[:8]}@example.com"


def fresh_ip() -> str:
    """A client address no other test uses: the per-address counters live in the one Redis
    every test of the session shares (and 127.0.0.1 is everyone's peer)."""
    return f"198.18.{random.randrange(256)}.{random.randrange(1, 255)}"


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await call()
    return time.perf_counter() - started, result


def answer(status: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """What tells one answer from another, without the request id every answer differs by."""
    return status, {k: v for k, v in body.items() if k != "request_id"}


@pytest.fixture
async def slow_hashes(aiohttp_client, settings_for) -> TestClient:
    """bcrypt at cost 10 (~60 ms a hash here): slow enough that skipping a hash shows."""
    settings = settings_for(UserSettings, "user", BCRYPT_ROUNDS="10")
    return await aiohttp_client(init_app(settings))


@pytest.fixture
async def client(aiohttp_client, settings_for) -> TestClient:
    settings = settings_for(
        UserSettings,
        "user",
        BCRYPT_ROUNDS="4",
        LOGIN_ATTEMPTS_PER_ACCOUNT="3",
        LOGIN_ATTEMPTS_PER_ADDRESS="5",
        RESET_REQUESTS_PER_ACCOUNT="2",
        RESET_REQUESTS_PER_ADDRESS="4",
    )
    return await aiohttp_client(init_app(settings))


async def register(client: TestClient, email: str, password: str = PASSWORD) -> tuple[int, Any]:
    response = await client.post("/api/users/register", json={"email": email, "password": password})
    return response.status, await response.json()


async def login(
    client: TestClient, email: str, password: str, client_address: str | None = None
) -> int:
    """One login as a client at `client_address` (a fresh one when not given), as the gateway
    forwards it."""
    response = await client.post(
        "/api/users/login",
        json={"email": email, "password": password},
        headers={"X-Forwarded-For": client_address or fresh_ip()},
    )
    return response.status


# --- enumeration ---------------------------------------------------------------------------


async def test_register_answers_a_known_address_as_a_new_one(client: TestClient) -> None:
    known = address()
    first = await register(client, known)
    again = await register(client, known, "another-pass-77")
    new = await register(client, address())
    assert answer(*first) == answer(*again) == answer(*new)
    assert first[0] == 202
    # And the known account kept its password: the second registration changed nothing.
    assert await login(client, known, PASSWORD) == 200
    assert await login(client, known, "another-pass-77") == 401


async def test_login_takes_as_long_for_an_unknown_address_as_for_a_wrong_password(
    slow_hashes: TestClient,
) -> None:
    """The leak was ~250 ms against ~5 ms (no hash for an unknown address). Alternating the
    two kinds of attempt spreads any load on the machine over both."""
    known = address()
    assert (await register(slow_hashes, known))[0] == 202
    wrong, unknown = [], []
    for _ in range(4):
        seconds, status = await timed(lambda: login(slow_hashes, known, WRONG))
        assert status == 401
        wrong.append(seconds)
        seconds, status = await timed(lambda: login(slow_hashes, address(), WRONG))
        assert status == 401
        unknown.append(seconds)
    ratio = statistics.median(unknown) / statistics.median(wrong)
    assert 0.6 < ratio < 1.7, (wrong, unknown)


async def test_a_reset_takes_as_long_for_an_unknown_address(client: TestClient) -> None:
    known = address()
    assert (await register(client, known))[0] == 202
    answers = []
    for email in (known, address()):
        seconds, response = await timed(
            lambda email=email: client.post(
                "/api/users/password-reset",
                json={"email": email},
                headers={"X-Forwarded-For": fresh_ip()},
            )
        )
        assert response.status == 202
        assert seconds >= 0.15  # the floor that hides the database's work
        answers.append(answer(response.status, await response.json()))
    assert answers[0] == answers[1]


async def test_reset_confirm_with_a_bogus_token_spends_no_bcrypt_work(
    slow_hashes: TestClient,
) -> None:
    """Checked before hashing: a made-up token is refused at once, far faster than one hash."""
    hash_seconds, status = await timed(lambda: register(slow_hashes, address()))
    assert status[0] == 202
    confirm = {"token": "z" * 43, "new_password": "brand-new-pass-7"}
    seconds, response = await timed(
        lambda: slow_hashes.post("/api/users/password-reset/confirm", json=confirm)
    )
    assert response.status == 400
    assert seconds < hash_seconds / 3, (seconds, hash_seconds)


# --- throttles -----------------------------------------------------------------------------


def spellings(email: str) -> list[str]:
    """One address written the ways a client can: upper case, full-width letters (NFKC), the
    Kelvin sign for k, and U+0130 (whose lower case differs between Python and PostgreSQL)."""
    local, domain = email.split("@")
    return [
        email.upper(),
        local.replace("s", "\uff53", 1) + "@" + domain,  # FULLWIDTH LATIN SMALL LETTER S
        local + "@" + domain.replace("k", "\u212a").upper(),  # KELVIN SIGN
        local.title() + "@" + domain.title(),
    ]


def test_every_spelling_of_an_address_is_one_address() -> None:
    email = address("shopper-kai")
    assert {normalize_email(spelling) for spelling in spellings(email)} == {email}
    # U+0130 folds to "i" + a combining dot above: one account, however it is cased.
    assert normalize_email("\u0130nci@Example.com") == normalize_email("i\u0307NCI@example.COM")


async def test_spelling_an_address_another_way_gets_no_fresh_guesses(client: TestClient) -> None:
    email = address("shopper-kai")
    assert (await register(client, email))[0] == 202
    variants = spellings(email)
    # Three wrong guesses, each spelled another way (the account's budget is 3)...
    for variant in variants[:3]:
        assert await login(client, variant, WRONG) == 401
    # ...then the right password in a fourth spelling, from a fresh client address: refused.
    assert await login(client, variants[3], PASSWORD) == 429


async def test_an_account_with_u0130_is_throttled_however_it_is_cased(client: TestClient) -> None:
    email = f"\u0130nci-{uuid.uuid4().hex[:8]}@example.com"
    assert (await register(client, email))[0] == 202
    assert await login(client, email.lower(), PASSWORD) == 200
    for variant in (email, email.lower(), email.upper()):
        assert await login(client, variant, WRONG) == 401
    assert await login(client, email, PASSWORD) == 429


async def test_the_per_address_limit_counts_the_address_the_gateway_saw(
    client: TestClient,
) -> None:
    """Behind the gateway a service gets one X-Forwarded-For, the gateway's (it replaces the
    client's: tests/stacks/test_gateway.py). The limit keys on it: guesses at many accounts
    from one address run out, and another address is untouched."""
    attacker, bystander = fresh_ip(), fresh_ip()
    for _ in range(5):
        assert await login(client, address(), WRONG, attacker) == 401
    assert await login(client, address(), WRONG, attacker) == 429
    assert await login(client, address(), WRONG, bystander) == 401
    # A header the gateway never sends (a list, or two headers) is not believed: the peer
    # (127.0.0.1) is counted instead, so naming a victim locks out nobody.
    victim = fresh_ip()
    for spoofed in ({"X-Forwarded-For": f"{victim}, 10.0.0.1"}, [("X-Forwarded-For", victim)] * 2):
        response = await client.post(
            "/api/users/login", json={"email": address(), "password": WRONG}, headers=spoofed
        )
        assert response.status == 401
    for _ in range(5):  # the victim's whole budget is still there
        assert await login(client, address(), WRONG, victim) == 401
    assert await login(client, address(), WRONG, victim) == 429


async def test_reset_requests_are_throttled_per_account_and_leave_no_trace(
    client: TestClient, platform: DataTier
) -> None:
    email = address()
    assert (await register(client, email))[0] == 202
    statuses = []
    for variant in [email, email.upper(), email.title()]:
        response = await client.post(
            "/api/users/password-reset",
            json={"email": variant},
            headers={"X-Forwarded-For": fresh_ip()},
        )
        statuses.append(response.status)
    assert statuses == [202, 202, 429]  # two per account, however it is spelled
    connection = await asyncpg.connect(platform.postgres.primary_dsn)
    try:
        sent = await connection.fetchval(
            """SELECT count(*) FROM outbox o JOIN users u ON o.key = u.id::text
               WHERE o.topic = 'user.password_reset' AND u.email = $1""",
            email,
        )
    finally:
        await connection.close()
    assert sent == 2  # the refused request sent no mail
    # An unknown address is throttled alike: the 429 tells nothing either.
    unknown = address()
    answers = [
        (
            await client.post(
                "/api/users/password-reset",
                json={"email": unknown},
                headers={"X-Forwarded-For": fresh_ip()},
            )
        ).status
        for _ in range(3)
    ]
    assert answers == [202, 202, 429]


async def test_concurrent_logins_beyond_the_hashing_bound_get_a_fast_503(
    aiohttp_client, settings_for
) -> None:
    """48 logins at once made every login time out at the gateway. Now hashing work is
    bounded per process: what does not fit is refused at once with Retry-After."""
    settings = settings_for(UserSettings, "user", BCRYPT_ROUNDS="10", BCRYPT_PENDING_PER_CORE="1")
    client = await aiohttp_client(init_app(settings))
    answers = await asyncio.gather(
        *(
            client.post(
                "/api/users/login",
                json={"email": address(), "password": WRONG},
                headers={"X-Forwarded-For": fresh_ip()},
            )
            for _ in range(48)
        )
    )
    statuses = [response.status for response in answers]
    assert set(statuses) == {401, 503}, statuses
    refused = [r for r in answers if r.status == 503]
    assert all(r.headers["Retry-After"] == "1" for r in refused)
    assert statuses.count(401) <= 8  # what the bound lets through at once (cores x 1, and a few)
