"""The payment service's application: the ledger, the providers behind their breakers, fraud."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field

from services.kit import backends
from services.kit.app import create_app
from services.kit.metrics import Metrics
from services.kit.settings import Expect, SecretFile, Settings
from services.kit.tasks import every
from services.payment.fraud import FraudRules
from services.payment.ledger import Ledger
from services.payment.providers import PayPalProvider, StripeProvider
from services.payment.resilience import BreakerConfig, PaymentMetrics, PaymentRouter
from services.payment.strays import sweep_strays
from services.payment.views import FRAUD, LEDGER, ROUTER, api

Url = Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$"), Expect("an http(s) URL")]


class PaymentSettings(Settings):
    # The primary provider first: checkouts fail over to the second when it is unwell.
    stripe_url: Url
    stripe_api_key_file: SecretFile
    paypal_url: Url
    paypal_api_key_file: SecretFile
    max_amount_cents: Annotated[int, Field(gt=0), Expect("cents, > 0")] = 1_000_000
    velocity_limit: Annotated[int, Field(ge=1), Expect("payments per window, >= 1")] = 5
    velocity_window_seconds: Annotated[int, Field(ge=1), Expect("seconds")] = 3600
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
    router = PaymentRouter(
        [
            StripeProvider(
                settings.stripe_url,
                settings.stripe_api_key_file.read_text().strip(),
                timeout_s=settings.provider_timeout_seconds,
            ),
            PayPalProvider(
                settings.paypal_url,
                settings.paypal_api_key_file.read_text().strip(),
                timeout_s=settings.provider_timeout_seconds,
            ),
        ],
        metrics=PaymentMetrics(metrics.registry),
        breaker=BreakerConfig(cooldown_s=settings.breaker_cooldown_seconds),
    )
    revocations = backends.revocations(settings)
    app = create_app(settings, api, [database], metrics=metrics, revocations=revocations)
    app[LEDGER] = Ledger(database)
    app[ROUTER] = router
    app[FRAUD] = FraudRules(
        max_amount_cents=settings.max_amount_cents,
        velocity_limit=settings.velocity_limit,
        velocity_window_s=settings.velocity_window_seconds,
    )

    async def close_router(app: web.Application) -> None:
        await router.close()

    async def sweep() -> None:
        await sweep_strays(app[LEDGER], router, settings.stray_pending_grace_seconds)

    app.cleanup_ctx.append(every(settings.stray_sweep_seconds, sweep, "stray-authorizations"))
    app.on_cleanup.append(close_router)
    return app
