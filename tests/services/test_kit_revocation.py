"""Revoked sessions against the session's real Redis cluster: one session, every session of a
subject, how soon another process sees it, and a Redis that cannot answer (fail closed)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from services.kit.cache import client
from services.kit.errors import ServiceUnavailable, Unauthorized
from services.kit.revocation import KEEP_S, VERDICT_TTL_S, Revocations
from services.kit.settings import HostPort
from stacks.local.data_tier import DataTier
from tests.services.kit_example import SECRET, build_app

Client = Callable[..., "asyncio.Future[TestClient]"]


@pytest.fixture
async def processes(data_tier: DataTier) -> AsyncIterator[tuple[Revocations, Revocations]]:
    """Two services' revocations (each its own client and verdicts), on one Redis."""
    made = [
        Revocations(
            client(
                [HostPort(host, int(port)) for host, port in _split(data_tier.redis.nodes)],
                data_tier.redis.password,
            )
        )
        for _ in range(2)
    ]
    yield made[0], made[1]
    for revocations in made:
        await revocations.redis.aclose()


def _split(nodes: list[str]) -> list[tuple[str, str]]:
    return [tuple(node.rsplit(":", 1)) for node in nodes]  # type: ignore[misc]


def subject() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


async def test_an_ended_session_is_refused_and_the_others_are_not(
    processes: tuple[Revocations, Revocations],
) -> None:
    here, _ = processes
    user, now = subject(), time.time()
    await here.refuse_if_revoked(user, "phone", now)
    await here.end_session(user, "phone")
    with pytest.raises(Unauthorized, match="session ended"):
        await here.refuse_if_revoked(user, "phone", now)  # at once where it was written
    await here.refuse_if_revoked(user, "laptop", now)
    await here.refuse_if_revoked(subject(), "phone", now)  # another user's session


async def test_ending_every_session_voids_what_was_issued_before_only(
    processes: tuple[Revocations, Revocations],
) -> None:
    here, _ = processes
    user = subject()
    issued_before = time.time()
    await asyncio.sleep(0.01)
    await here.end_all(user)
    with pytest.raises(Unauthorized, match="token revoked"):
        await here.refuse_if_revoked(user, "any-session", issued_before)
    await here.refuse_if_revoked(user, "any-session", time.time())  # a new login works
    ttl = await here.redis.ttl(f"revoked:{{{user}}}")
    assert KEEP_S - 10 < ttl <= KEEP_S  # outlives every token it voids, then goes


async def test_another_process_sees_a_revocation_within_the_verdict_ttl(
    processes: tuple[Revocations, Revocations],
) -> None:
    user_service, order_service = processes
    user, issued = subject(), time.time()
    await order_service.refuse_if_revoked(user, "s-1", issued)  # remembered as fine
    await user_service.end_session(user, "s-1")
    started = time.monotonic()
    while True:
        try:
            await order_service.refuse_if_revoked(user, "s-1", issued)
        except Unauthorized:
            break
        assert time.monotonic() - started < VERDICT_TTL_S + 0.5, "revocation not seen in time"
        await asyncio.sleep(0.05)


async def test_a_route_refuses_a_revoked_token_and_fails_closed_without_redis(
    aiohttp_client: Client, tmp_path: Path, redis_env: dict[str, str]
) -> None:
    from services.kit.auth import REVOCATIONS, Tokens

    user = subject()
    access = Tokens(SECRET).issue(user, "customer", "s-1")
    headers = {"Authorization": f"Bearer {access}"}
    app = build_app(tmp_path, redis=redis_env)
    served = await aiohttp_client(app)
    assert (await served.get("/api/me", headers=headers)).status == 200
    await app[REVOCATIONS].end_session(user, "s-1")
    refused = await served.get("/api/me", headers=headers)
    assert refused.status == 401
    assert (await refused.json())["message"] == "session ended: log in again"

    # No Redis to ask: a valid token is refused with 503, never let through unchecked, and
    # routes that need no user still serve.
    unchecked = await aiohttp_client(build_app(tmp_path))
    answer = await unchecked.get("/api/me", headers=headers)
    assert answer.status == 503 and answer.headers["Retry-After"] == "1"
    assert (await answer.json())["error"] == "service_unavailable"
    assert (await unchecked.get("/healthz")).status == 200
    assert (await unchecked.get("/readyz")).status == 200  # public routes still serve


async def test_revocations_need_redis_to_answer() -> None:
    nowhere = Revocations(client([HostPort("127.0.0.1", 9)], None, timeout_s=0.2))
    try:
        with pytest.raises(ServiceUnavailable):
            await nowhere.refuse_if_revoked("user-1", "s-1", time.time())
    finally:
        await nowhere.redis.aclose()


async def test_a_warm_up_connects_its_own_client_and_never_stops_a_start(
    data_tier: DataTier,
) -> None:
    """At start the revocations' own cluster client learns the slots and connects, so the
    first authenticated request does not pay for it within its short timeout; with no Redis
    the warm-up gives up quietly (public routes serve without it)."""
    nodes = [HostPort(host, int(port)) for host, port in _split(data_tier.redis.nodes)]
    own = Revocations(client(nodes, data_tier.redis.password, timeout_s=0.5), owns_client=True)
    nowhere = Revocations(client([HostPort("127.0.0.1", 9)], None, timeout_s=0.2), owns_client=True)
    try:
        assert own.redis.get_nodes() == []  # a cluster client learns its nodes when it first runs
        await own.warm_up()
        assert len(own.redis.get_primaries()) == data_tier.config.redis_masters
        began = time.monotonic()
        await nowhere.warm_up(timeout_s=2)
        assert time.monotonic() - began < 3
    finally:
        await own.close()
        await nowhere.close()
