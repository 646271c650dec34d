"""Services against the real data tier: the schema migrated once, a small catalog seeded, and
each service's settings built from the same environment function the GKE stack uses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from services.kit.auth import Tokens
from services.kit.migrate import migrate
from services.kit.settings import Settings
from services.maintenance.seed import seed
from stacks.local.data_tier import DataTier
from stacks.services import SERVICES

SEEDED_PRODUCTS = 480


async def _prepare(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await migrate(connection)
        await seed(connection, products=SEEDED_PRODUCTS)
    finally:
        await connection.close()


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
