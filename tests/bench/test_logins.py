"""The ``logins`` scenario's two measurements, run small: bcrypt's own rate, and a storm of
logins against the real user service on the session's data tier."""

from __future__ import annotations

import time
import uuid

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from bench import report
from bench.logins import bcrypt_rate, login_storm
from services.kit.migrate import migrate
from services.user.app import UserSettings, init_app
from stacks.local.data_tier import DataTier
from stacks.services import SERVICES

PASSWORD = "bench-password-1"


def test_bcrypt_rate_counts_checks_per_cpu_second() -> None:
    cheap, dear = bcrypt_rate(4, seconds=0.3), bcrypt_rate(8, seconds=0.3)
    assert cheap["checks"] > 10 and dear["checks"] >= 1
    # Each round doubles the work: 2**4 = 16 times dearer, within the noise of a busy machine.
    assert 6 < cheap["per_core_per_s"] / dear["per_core_per_s"] < 40


async def test_a_login_storm_counts_tokens_refusals_and_the_services_cpu(
    data_tier: DataTier,
) -> None:
    connection = await asyncpg.connect(data_tier.postgres.primary_dsn)
    try:
        await migrate(connection)
    finally:
        await connection.close()
    env = data_tier.service_environment(SERVICES["user"])
    settings = UserSettings.from_env({**env, "BCRYPT_ROUNDS": "8", "BCRYPT_PENDING_PER_CORE": "1"})
    server = TestServer(init_app(settings))
    await server.start_server()
    try:
        base = str(server.make_url("")).rstrip("/")
        emails = [f"storm-{uuid.uuid4().hex[:8]}@example.com" for _ in range(3)]
        async with aiohttp.ClientSession() as session:
            for email in emails:
                body = {"email": email, "password": PASSWORD}
                async with session.post(f"{base}/api/users/register", json=body) as response:
                    assert response.status == 202
        result = await login_storm(
            base,
            emails,
            PASSWORD,
            concurrency=8,
            duration_s=1.5,
            cpu_of_user_service=time.process_time,  # the service runs in this process
        )
    finally:
        await server.close()
    statuses = {int(code): n for code, n in result["statuses"].items()}
    assert set(statuses) <= {200, 503} and statuses.get(200, 0) > 0, statuses
    assert statuses.get(503, 0) > 0  # 8 clients, 2 checks at once: the bound refused some
    assert result["logins_per_s"] == pytest.approx(statuses[200] / result["duration_s"], rel=0.1)
    assert result["logins_per_cpu_s"] > 0 and result["p50_ms"] > 0
    assert result["refused_p50_ms"] < result["p50_ms"]  # refused at once, not after a hash
    lines = "\n".join(report._logins({"bcrypt": bcrypt_rate(8, 0.2), "gateway": result}))
    assert f"{result['logins_per_s']:.1f} logins/s" in lines and "cost 8" in lines
