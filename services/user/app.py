"""The user service's application: its settings, its backends, its routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from email.utils import parseaddr
from typing import Annotated, ClassVar

from aiohttp import web
from pydantic import AfterValidator, Field

from services.kit import backends
from services.kit.app import create_app
from services.kit.auth import PasswordHasher, Tokens
from services.kit.events import Consumer
from services.kit.logs import get_logger
from services.kit.metrics import Metrics, watch_dead_letters
from services.kit.settings import (
    Expect,
    Host,
    KeyFile,
    Port,
    SecretFile,
    Settings,
    SettingsError,
    read_secret,
)
from services.kit.tasks import FINISH_S, finish_or_cancel
from services.user.accounts import Accounts
from services.user.mailer import GROUP, TOPICS, ResetMailer, Security, SmtpServer
from services.user.sessions import Limit, Sessions, Throttle
from services.user.views import (
    ACCOUNTS,
    HASHER,
    LOGIN_THROTTLE,
    RESET_THROTTLE,
    SESSIONS,
    api,
)

log = get_logger(__name__)


def _mailbox(value: str) -> str:
    """`Shop <no-reply@shop.example.com>` or a bare address."""
    address = parseaddr(value)[1]
    local, at, domain = address.rpartition("@")
    if not (local and at and "." in domain) or "\n" in value or "\r" in value:
        raise ValueError("not an e-mail address")
    return value


Mailbox = Annotated[
    str,
    Field(max_length=200),
    AfterValidator(_mailbox),
    Expect("an address such as 'Shop <no-reply@shop.example.com>'"),
]

SmtpUser = Annotated[str, Field(min_length=1, max_length=200), Expect("a user name")]


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

    # Reset tokens are HMAC-SHA256(this key, the reset's id) (services/user/accounts.py).
    reset_key_file: KeyFile | None = None
    # The relay reset e-mails go through (stack config `smtp`); without SMTP_HOST none are sent.
    smtp_host: Host | None = None
    smtp_port: Port = 587
    smtp_security: Annotated[Security, Expect("one of starttls, tls, none")] = "starttls"
    smtp_from: Mailbox | None = None
    smtp_user: SmtpUser | None = None
    smtp_password_file: SecretFile | None = None
    # One attempt at sending (a free connection, connect, TLS, AUTH, DATA) takes at most this.
    smtp_timeout_seconds: Annotated[float, Field(gt=0, le=60), Expect("seconds, 0 < s <= 60")] = 10
    # A failed e-mail is tried again this long after its last attempt (must exceed the above).
    mail_retry_seconds: Annotated[float, Field(gt=0, le=3600), Expect("seconds, 0 < s <= 3600")] = (
        30
    )

    companions: ClassVar[dict[str, tuple[str, ...]]] = {
        **Settings.companions,
        "smtp_host": ("smtp_from",),
        "smtp_user": ("smtp_password_file",),
        "smtp_password_file": ("smtp_user",),
    }

    def smtp(self) -> SmtpServer | None:
        if self.smtp_host is None or self.smtp_from is None:
            return None
        path = self.smtp_password_file
        return SmtpServer(
            host=self.smtp_host,
            port=self.smtp_port,
            security=self.smtp_security,
            sender=self.smtp_from,
            user=self.smtp_user,
            password=None if path is None else read_secret(path),
            timeout_s=self.smtp_timeout_seconds,
        )


def init_app(settings: UserSettings) -> web.Application:
    problems = []
    if settings.jwt_secret_file is None:
        problems.append(("JWT_SECRET_FILE", "missing; the user service signs tokens"))
    if settings.reset_key_file is None:
        problems.append(("RESET_KEY_FILE", "missing; the user service makes reset tokens"))
    if settings.mail_retry_seconds <= settings.smtp_timeout_seconds:
        problems.append(
            (
                "MAIL_RETRY_SECONDS",
                f"expected more than SMTP_TIMEOUT_SECONDS ({settings.smtp_timeout_seconds}), "
                f"got {settings.mail_retry_seconds}: an e-mail still being sent would be sent "
                "again",
            )
        )
    if problems:
        raise SettingsError(problems, settings.service_name)
    assert settings.jwt_secret_file is not None and settings.reset_key_file is not None
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
    accounts = Accounts(database, read_secret(settings.reset_key_file).encode())
    app[ACCOUNTS] = accounts
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
    smtp = settings.smtp()
    if smtp is None:
        log.warning("SMTP_HOST is not set: password-reset e-mails are not sent")
    else:
        mailer = ResetMailer(accounts, smtp, metrics.registry)
        consumer = Consumer(
            redis.client, GROUP, TOPICS, mailer.handle, retry_after_s=settings.mail_retry_seconds
        )
        watch_dead_letters(metrics, [consumer])
        app.cleanup_ctx.append(_consume(consumer))
    return app


def _consume(consumer: Consumer) -> Callable[[web.Application], AsyncIterator[None]]:
    """The mailer's consumer as a background task of the app (after Redis has started)."""

    async def run(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                return await consumer.run(stop)
            except Exception as error:  # its group could not be made (Redis away): again
                log.warning("mailer could not start", group=consumer.group, error=str(error))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    async def context(_app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(run(stop), name=f"consumer-{consumer.group}")
        yield
        stop.set()
        await finish_or_cancel([task], FINISH_S)

    return context
