"""Services against the real data tier: the schema migrated once, a small catalog seeded, and
each service's settings built from the same environment function the GKE stack uses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster

from services.kit import backends
from services.kit.auth import Tokens
from services.kit.events import OutboxRelay
from services.kit.metrics import Metrics
from services.kit.migrate import migrate
from services.kit.settings import Settings
from services.mailsink import HOST, MailSink
from services.maintenance.seed import seed
from stacks.config import SmtpConfig
from stacks.local.data_tier import DataTier
from stacks.services import SERVICES
from stacks.wiring import mail_environment

SEEDED_PRODUCTS = 480


async def _prepare(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await migrate(connection)
        await seed(connection, products=SEEDED_PRODUCTS)
    finally:
        await connection.close()


@pytest.fixture
async def redis(platform: DataTier) -> AsyncIterator[RedisCluster]:
    """A cluster client on the session's Redis, closed after the test."""
    client = RedisCluster(
        startup_nodes=[ClusterNode(*n.rsplit(":", 1)) for n in platform.redis.nodes],
        password=platform.redis.password,
    )
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def platform(data_tier: DataTier) -> DataTier:
    """The shared data tier with the schema and the demo catalog in place."""
    asyncio.run(_prepare(data_tier.postgres.pgpool_dsn))
    return data_tier


@pytest.fixture(scope="session")
def settings_for(platform: DataTier) -> Callable[..., Any]:
    """`settings_for(UserSettings, "user", BCRYPT_ROUNDS="4")`: a service's settings as the
    platform would start it, with overrides."""

    def build(settings_type: type[Settings], service: str, **overrides: str) -> Any:
        env = {**platform.service_environment(SERVICES[service]), **overrides}
        return settings_type.from_env(env)

    return build


@pytest.fixture(scope="session")
def tokens(platform: DataTier) -> Tokens:
    """The platform's token issuer (the user service's key), to act as any user."""
    return Tokens.from_file(platform.jwt_secret_file)


@pytest.fixture(scope="session")
def redis_env(data_tier: DataTier) -> dict[str, str]:
    """The Redis settings of a service, for apps built by hand (`kit_example.build_app`)."""
    return {
        "REDIS_NODES": ",".join(data_tier.addresses().redis_nodes),
        "REDIS_PASSWORD_FILE": data_tier.secret_files().redis_password,
    }


# --- e-mail: the shipped sink, and the relay that brings the events ------------------------

MAIL_USER = "shop"


@pytest.fixture
async def mail_sink(tmp_path: Path) -> AsyncIterator[MailSink]:
    """The shipped mail sink, its SMTP side listening (`.port`); it wants AUTH as MAIL_USER."""
    sink = MailSink(MAIL_USER, "sink-password-1")
    await sink.start_smtp(HOST, 0)
    yield sink
    await sink.stop_smtp()


@pytest.fixture
def mail_env(mail_sink: MailSink, tmp_path: Path) -> dict[str, str]:
    """The user service's SMTP settings for the sink, as the wiring writes them, with short
    timeouts and retries."""
    assert mail_sink.password is not None and mail_sink.port is not None
    password_file = tmp_path / "smtp-password"
    password_file.write_text(mail_sink.password + "\n")
    smtp = SmtpConfig(host=HOST, port=mail_sink.port, security="none", user=MAIL_USER)
    return {
        **mail_environment(smtp, str(password_file)),
        "SMTP_TIMEOUT_SECONDS": "1",
        "MAIL_RETRY_SECONDS": "1.5",
    }


@pytest.fixture
async def outbox_relay(settings_for: Callable[..., Any]) -> AsyncIterator[None]:
    """The outbox relay (on the platform it runs in the order service), running meanwhile."""
    settings = settings_for(Settings, "order")
    database = backends.database(settings, Metrics("relay", process=False), pool_max=2)
    redis = backends.redis(settings)
    await database.start()
    await redis.start()
    stop = asyncio.Event()
    task = asyncio.create_task(OutboxRelay(database, redis.client).run(stop, idle_s=0.05))
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, 5)
        await redis.close()
        await database.close()
