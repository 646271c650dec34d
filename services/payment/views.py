"""The payment service's API: only the order service's saga (and administrators) call it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from services.kit.api import Api, json_response
from services.kit.auth import Principal
from services.kit.errors import ApiError, Conflict, NotFound, ServiceUnavailable, ValidationFailed
from services.kit.tasks import finish_even_if_cancelled
from services.payment.fraud import FraudRules, VelocityUnavailable
from services.payment.ledger import Ledger
from services.payment.providers import PermanentError, TransientError
from services.payment.resilience import PaymentRouter

api = Api("payment", version="1.0.0", description="Charges over two providers; tokens only")

LEDGER = web.AppKey("ledger", Ledger)
ROUTER = web.AppKey("router", PaymentRouter)
FRAUD = web.AppKey("fraud", FraudRules)
CALLERS = ("service", "admin")
KEY_HEADER = "Idempotency-Key"


class PaymentRequired(ApiError):
    status, code, default_message = 402, "payment_declined", "the payment was declined"


class Charge(BaseModel):
    order_id: int = Field(gt=0, lt=2**63)
    user_id: str = Field(min_length=1, max_length=64)
    amount_cents: int = Field(gt=0, le=100_000_000)
    currency: Literal["USD", "EUR", "GBP"]
    # A provider's payment token from the shopper's browser; never a card number.
    token: Annotated[str, Field(pattern=r"^tok_[A-Za-z0-9_]{4,64}$")]


class Payment(BaseModel):
    id: str
    order_id: int
    provider: str
    provider_ref: str | None
    amount_cents: int
    currency: str
    status: Literal["pending", "authorized", "captured", "voided", "refunded", "failed"]
    failure_reason: str | None


class PaymentPath(BaseModel):
    payment_id: str = Field(pattern=r"^[0-9a-f-]{36}$")


@api.post(
    "/api/payments",
    body=Charge,
    response=Payment,
    status=201,
    auth=CALLERS,
    errors=[PaymentRequired, Conflict, ServiceUnavailable],
)
async def charge(request: web.Request, body: Charge, user: Principal) -> web.Response:
    """Authorize and capture, once per `Idempotency-Key` (a retry resumes, never re-charges).

    402 when declined (by a provider or the fraud rules); 503 when no provider answers or the
    fraud rules cannot be checked: retry later with the same key."""
    key = request.headers.get(KEY_HEADER, "")
    if not 8 <= len(key) <= 128 or not key.isascii():
        raise ValidationFailed.field(f"header.{KEY_HEADER}", "expected 8 to 128 ASCII characters")
    payment = await finish_even_if_cancelled(_settle(request.app, key, body))
    if payment["status"] == "failed":
        raise PaymentRequired(f"payment declined: {payment['failure_reason']}")
    return json_response(Payment(**payment), status=201)


async def _settle(app: web.Application, key: str, body: Charge) -> dict[str, Any]:
    """The charge's steps, each recorded in the ledger before the next: a retry with the same
    key resumes where the last attempt stopped."""
    ledger, router = app[LEDGER], app[ROUTER]
    payment, same = await ledger.open(key, body.order_id, body.amount_cents, body.currency)
    if not same:
        raise Conflict(f"{KEY_HEADER} was used for a different payment")
    if payment["status"] == "pending":
        try:
            decision = await app[FRAUD].check(
                body.user_id, str(payment["id"]), body.amount_cents, body.currency
            )
        except VelocityUnavailable:
            # Fail closed (services.payment.fraud): the row stays pending for the retry.
            raise ServiceUnavailable(
                "the fraud rules cannot be checked now; retry with the same key", retry_after_s=1
            ) from None
        if not decision.allowed:
            payment = await ledger.update(
                payment["id"], status="failed", failure_reason=decision.reason
            )
        else:
            try:
                provider_key = f"{key}:authorize"

                async def left_behind(provider: str) -> None:
                    await ledger.note_stray(
                        payment["id"],
                        provider,
                        provider_key,
                        body.amount_cents,
                        body.currency,
                        body.token,
                    )

                auth = await router.authorize(
                    body.amount_cents,
                    body.currency,
                    body.token,
                    provider_key,
                    left_behind=left_behind,
                )
            except PermanentError as error:
                payment = await ledger.update(
                    payment["id"], status="failed", failure_reason=error.code
                )
            except TransientError:
                raise ServiceUnavailable(
                    "no payment provider answers; retry with the same key"
                ) from None
            else:
                payment = await ledger.update(
                    payment["id"],
                    status="authorized",
                    provider=auth.provider,
                    provider_ref=auth.reference,
                )
    if payment["status"] == "authorized":
        try:
            captured = await router.capture(
                payment["provider"], payment["provider_ref"], f"{key}:capture"
            )
        except TransientError:
            raise ServiceUnavailable(
                "the provider did not capture; retry with the same key"
            ) from None
        payment = await ledger.update(
            payment["id"], status="captured", provider_ref=captured.reference
        )
    return payment


@api.post(
    "/api/payments/{payment_id}/refund",
    path_params=PaymentPath,
    response=Payment,
    auth=CALLERS,
    errors=[NotFound, Conflict, ServiceUnavailable],
)
async def refund(request: web.Request, path_params: PaymentPath, user: Principal) -> Payment:
    """Give a captured payment back in full (saga compensation); repeating it changes nothing."""
    return Payment(**await finish_even_if_cancelled(_refund(request.app, path_params.payment_id)))


async def _refund(app: web.Application, payment_id: str) -> dict[str, Any]:
    ledger = app[LEDGER]
    payment = await ledger.get(payment_id)
    if payment is None:
        raise NotFound(f"no payment {payment_id}")
    if payment["status"] == "refunded":
        return payment
    if payment["status"] != "captured":
        raise Conflict(f"a {payment['status']} payment cannot be refunded")
    try:
        await app[ROUTER].refund(
            payment["provider"],
            payment["provider_ref"],
            payment["amount_cents"],
            payment["currency"],
            f"{payment['id']}:refund",
        )
    except TransientError:
        raise ServiceUnavailable("the provider did not refund; retry") from None
    return await ledger.update(payment["id"], status="refunded")
