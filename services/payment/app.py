"""The payment service's application: the ledger, the providers behind their breakers, fraud
(its velocity window in the Redis cluster, shared by every replica)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from aiohttp import web
from pydantic import AfterValidator, Field

from services.kit import backends
from services.kit.app import create_app
from services.kit.metrics import Metrics
from services.kit.resilience import BreakerConfig
from services.kit.settings import Expect, SecretFile, Settings, read_secret
from services.kit.tasks import every
from services.payment.fraud import FraudRules, RedisVelocityStore
from services.payment.ledger import Ledger
from services.payment.providers import PayPalProvider, StripeProvider, paypal_credentials
from services.payment.resilience import PaymentMetrics, PaymentRouter
from services.payment.strays import sweep_strays
from services.payment.views import FRAUD, LEDGER, ROUTER, api

Url = Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$"), Expect("an http(s) URL")]


def _holds_paypal_credentials(path: Path) -> Path:
    paypal_credentials(read_secret(path))  # a ValueError names the format
    return path


PayPalCredentialsFile = Annotated[
    SecretFile,
    AfterValidator(_holds_paypal_credentials),
    Expect("the path of a readable file holding the OAuth2 client credentials client_id:secret"),
]


class PaymentSettings(Settings):
    # The primary provider first: checkouts fail over to the second when it is unwell.
    stripe_url: Url
    stripe_api_key_file: SecretFile
    paypal_url: Url
    paypal_api_key_file: PayPalCredentialsFile
    max_amount_cents: Annotated[int, Field(gt=0), Expect("cents, > 0")] = 1_000_000
    velocity_limit: Annotated[int, Field(ge=1), Expect("payments per window, >= 1")] = 5
    velocity_window_seconds: Annotated[int, Field(ge=1), Expect("seconds")] = 3600
    # When Redis cannot say how many payments a user made: payments up to this are allowed
    # unchecked, larger ones answer 503 for the saga to retry (0: fail closed for all).
    velocity_unchecked_max_cents: Annotated[int, Field(ge=0), Expect("cents, >= 0")] = 0
    provider_timeout_seconds: Annotated[float, Field(gt=0, le=30), Expect("seconds")] = 5.0
    # How long an open breaker keeps a provider out before one trial call may go.
    breaker_cooldown_seconds: Annotated[float, Field(gt=0, le=3600), Expect("seconds")] = 30.0
    # How often authorizations left behind at a failing provider are looked for and voided,
    # and how long a charge may stay pending (being retried) before its strays count as left.
    stray_sweep_seconds: Annotated[float, Field(gt=0), Expect("seconds")] = 60.0
    stray_pending_grace_seconds: Annotated[float, Field(ge=0), Expect("seconds")] = 900.0


def init_app(settings: PaymentSettings) -> web.Application:
    metrics = Metrics(settings.service_name)
    database = backends.database(settings, metrics)
    redis = backends.redis(settings)
    router = PaymentRouter(
        [
            StripeProvider(
                settings.stripe_url,
                read_secret(settings.stripe_api_key_file),
                timeout_s=settings.provider_timeout_seconds,
            ),
            PayPalProvider(
                settings.paypal_url,
                read_secret(settings.paypal_api_key_file),
                timeout_s=settings.provider_timeout_seconds,
            ),
        ],
        metrics=PaymentMetrics(metrics.registry),
        breaker=BreakerConfig(cooldown_s=settings.breaker_cooldown_seconds),
    )
    revocations = backends.revocations(settings, redis.client)
    app = create_app(settings, api, [database, redis], metrics=metrics, revocations=revocations)
    app[LEDGER] = Ledger(database)
    app[ROUTER] = router
    app[FRAUD] = FraudRules(
        RedisVelocityStore(redis.client),
        max_amount_cents=settings.max_amount_cents,
        velocity_limit=settings.velocity_limit,
        velocity_window_s=settings.velocity_window_seconds,
        unchecked_max_cents=settings.velocity_unchecked_max_cents,
        registry=metrics.registry,
    )

    async def close_router(app: web.Application) -> None:
        await router.close()

    async def sweep() -> None:
        await sweep_strays(app[LEDGER], router, settings.stray_pending_grace_seconds)

    app.cleanup_ctx.append(every(settings.stray_sweep_seconds, sweep, "stray-authorizations"))
    app.on_cleanup.append(close_router)
    return app
