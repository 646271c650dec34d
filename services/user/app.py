"""The user service's application: its settings, its backends, its routes."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from aiohttp import web
from pydantic import Field

from services.kit import backends
from services.kit.app import create_app
from services.kit.auth import PasswordHasher, Tokens
from services.kit.metrics import Metrics
from services.kit.settings import Expect, Settings, SettingsError
from services.user.accounts import Accounts
from services.user.sessions import Limit, Sessions, Throttle
from services.user.views import (
    ACCOUNTS,
    HASHER,
    LOGIN_THROTTLE,
    RESET_THROTTLE,
    SESSIONS,
    api,
)


class UserSettings(Settings):
    access_token_minutes: Annotated[int, Field(ge=1, le=60), Expect("minutes, 1..60")] = 15
    # Seed: bcrypt; 12 rounds is ~0.25 s per hash on one core here.
    bcrypt_rounds: Annotated[int, Field(ge=4, le=16), Expect("4..16")] = 12
    login_attempts_per_account: Annotated[int, Field(ge=1), Expect("a positive integer")] = 5
    login_attempts_per_address: Annotated[int, Field(ge=1), Expect("a positive integer")] = 50
    login_window_seconds: Annotated[int, Field(ge=1), Expect("seconds")] = 15 * 60
    # Reset links asked for: a few per address and hour (each sends an e-mail).
    reset_requests_per_account: Annotated[int, Field(ge=1), Expect("a positive integer")] = 3
    reset_requests_per_address: Annotated[int, Field(ge=1), Expect("a positive integer")] = 20
    reset_window_seconds: Annotated[int, Field(ge=1), Expect("seconds")] = 60 * 60
    # bcrypt work waiting or running per process, beyond which logins get a fast 503.
    bcrypt_pending_per_core: Annotated[int, Field(ge=1, le=64), Expect("1..64")] = 4


def init_app(settings: UserSettings) -> web.Application:
    if settings.jwt_secret_file is None:
        raise SettingsError(
            [("JWT_SECRET_FILE", "missing; the user service signs tokens")], settings.service_name
        )
    metrics = Metrics(settings.service_name)
    database = backends.database(settings, metrics)
    redis = backends.redis(settings)
    tokens = Tokens.from_file(
        settings.jwt_secret_file, access_ttl=timedelta(minutes=settings.access_token_minutes)
    )
    revocations = backends.revocations(settings, redis.client)
    app = create_app(
        settings,
        api,
        [database, redis],
        metrics=metrics,
        tokens=tokens,
        revocations=revocations,
    )
    app[ACCOUNTS] = Accounts(database)
    app[SESSIONS] = Sessions(redis.client, settings.cache_ttl_sessions)
    login_window, reset_window = settings.login_window_seconds, settings.reset_window_seconds
    app[LOGIN_THROTTLE] = Throttle(
        redis.client,
        "login",
        per_account=Limit(settings.login_attempts_per_account, login_window),
        per_address=Limit(settings.login_attempts_per_address, login_window),
    )
    app[RESET_THROTTLE] = Throttle(
        redis.client,
        "reset",
        per_account=Limit(settings.reset_requests_per_account, reset_window),
        per_address=Limit(settings.reset_requests_per_address, reset_window),
    )
    app[HASHER] = PasswordHasher(
        rounds=settings.bcrypt_rounds, pending_per_core=settings.bcrypt_pending_per_core
    )
    return app
