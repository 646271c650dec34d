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
from services.user.sessions import Limit, LoginThrottle, Sessions
from services.user.views import ACCOUNTS, HASHER, SESSIONS, THROTTLE, api


class UserSettings(Settings):
    access_token_minutes: Annotated[int, Field(ge=1, le=60), Expect("minutes, 1..60")] = 15
    # Seed: bcrypt; 12 rounds is ~0.25 s per hash on one core here.
    bcrypt_rounds: Annotated[int, Field(ge=4, le=16), Expect("4..16")] = 12
    login_attempts_per_account: Annotated[int, Field(ge=1), Expect("a positive integer")] = 5
    login_attempts_per_address: Annotated[int, Field(ge=1), Expect("a positive integer")] = 50
    login_window_seconds: Annotated[int, Field(ge=1), Expect("seconds")] = 15 * 60


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
    app = create_app(settings, api, [database, redis], metrics=metrics, tokens=tokens)
    app[ACCOUNTS] = Accounts(database)
    app[SESSIONS] = Sessions(redis.client, settings.cache_ttl_sessions)
    window = settings.login_window_seconds
    app[THROTTLE] = LoginThrottle(
        redis.client,
        per_account=Limit(settings.login_attempts_per_account, window),
        per_address=Limit(settings.login_attempts_per_address, window),
    )
    app[HASHER] = PasswordHasher(rounds=settings.bcrypt_rounds)
    return app
