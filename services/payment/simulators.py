"""Stand-ins for the two payment providers, shipped so the platform runs (and is tested) with
no account anywhere:

    python -m services.payment.simulators --kind stripe --port 12111
    python -m services.payment.simulators --kind paypal --port 12112

`stripe` imitates a Stripe-like API: form-encoded bodies, amounts in minor units, errors as
`{"error": {"type", "code", "decline_code", "message"}}`, idempotency by `Idempotency-Key`:

    POST /v1/payment_intents                 amount, currency, payment_method=tok_...,
                                             capture_method=manual, confirm=true
    POST /v1/payment_intents/{id}/capture    [amount_to_capture]
    POST /v1/payment_intents/{id}/cancel
    POST /v1/refunds                         payment_intent, [amount]

`paypal` imitates a PayPal-like API: JSON bodies, amounts as decimal strings, errors as
`{"name", "message", "debug_id", "details": [{"issue", "description"}]}`, idempotency by
`PayPal-Request-Id` (scoped to the request path, as PayPal's is to the call):

    POST /v2/checkout/orders                           intent=AUTHORIZE, purchase_units,
                                                       payment_source.token
    POST /v2/checkout/orders/{id}/authorize
    POST /v2/payments/authorizations/{id}/capture      [amount]
    POST /v2/payments/authorizations/{id}/void
    POST /v2/payments/captures/{id}/refund             [amount]

Stripe wants `Authorization: Bearer <api key>` (`--api-key`, default `sim-secret`). PayPal
wants an OAuth2 access token, got with the client credentials grant:

    POST /v1/oauth2/token    HTTP Basic client_id:secret, form grant_type=client_credentials
                             -> {"access_token", "token_type": "Bearer", "expires_in", ...}

(`--api-key` is then `client_id:secret`, default `sim-client:sim-secret`). Wrong credentials
answer 401 `{"error": "invalid_client", "error_description"}`; an API call without a live
token (none, an unknown one, the client secret itself, an expired or a revoked one) answers
401 `{"error": "invalid_token", "error_description"}`, as PayPal does. Access tokens live
`token_ttl_s` (the behaviour's; PayPal's own live about 9 hours).

A payment token that contains `declined` is declined, one that contains `insufficient` lacks
funds; any other `tok_...` token pays. A body holding anything that looks like a card number
is refused (and never echoed, logged or stored): the platform handles tokens only.

Idempotent replays, the request log and the failure modes are every simulator's
(services.kit.simulator); the payment ones add:

    GET  /_sim/charges     every payment: amounts, status, how many captures/voids/refunds
                           were applied and the idempotency key of each operation
    POST /_sim/revoke_tokens   (paypal) every access token issued so far stops working

and `token_ttl_s` (paypal: how long the access tokens issued from then on live, default
32400) in `POST /_sim/behaviour`. Token exchanges are calls too: an unwell provider issues
no tokens either. `/_sim/reset` forgets the tokens as well.
"""

from __future__ import annotations

import argparse
import base64
import secrets
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from aiohttp import hdrs, web
from pydantic import Field

from services.kit import simulator
from services.kit.simulator import Answer, BadBody, Json, Operation
from services.kit.tasks import finish_even_if_cancelled
from services.payment.money import contains_pan, format_amount, parse_amount
from services.payment.providers import paypal_credentials

Kind = Literal["stripe", "paypal"]
DEFAULT_API_KEY = "sim-secret"  # Stripe's key, and the PayPal client's secret
DEFAULT_CLIENT_ID = "sim-client"
DEFAULT_CREDENTIALS: dict[str, str] = {
    "stripe": DEFAULT_API_KEY,
    "paypal": f"{DEFAULT_CLIENT_ID}:{DEFAULT_API_KEY}",
}
PAYPAL_TOKEN_TTL_S = 32_400  # what PayPal's expires_in says: 9 hours


class Behaviour(simulator.Behaviour):
    # paypal: how long access tokens issued from now on live (short, to test renewal).
    token_ttl_s: int = Field(default=PAYPAL_TOKEN_TTL_S, ge=1, le=86_400)


@dataclass
class Payment:
    """One authorization and what happened to it since."""

    id: str
    idempotency_key: str | None
    amount_cents: int
    currency: str
    status: str = "authorized"  # authorized, captured, voided
    captured_cents: int = 0
    refunded_cents: int = 0
    authorizations: int = 1
    captures: int = 0
    voids: int = 0
    refunds: int = 0
    capture_id: str | None = None  # PayPal's capture object (refunds are made against it)
    operations: list[dict[str, Any]] = field(default_factory=list)

    def record(self, operation: str, key: str | None, amount_cents: int | None = None) -> None:
        self.operations.append(
            {"operation": operation, "idempotency_key": key, "amount_cents": amount_cents}
        )


class Simulator(simulator.Simulator):
    """What both providers share: their credentials, the PAN check, the ledger."""

    kind: Kind
    behaviour_model = Behaviour
    behaviour: Behaviour

    def __init__(self, *, api_key: str | None = None, seed: int | None = None) -> None:
        super().__init__(
            api_key=DEFAULT_CREDENTIALS[self.kind] if api_key is None else api_key, seed=seed
        )
        self.payments: dict[str, Payment] = {}

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/_sim/charges", self.charges)
        return app

    def screen(self, body: Json) -> Answer | None:
        if contains_pan(body):  # never echoed, logged or stored: refused outright
            return self.error(400, "card_number_rejected", "raw card numbers are not accepted")
        return None

    async def charges(self, _request: web.Request) -> web.Response:
        return web.json_response({"charges": [asdict(p) for p in self.payments.values()]})

    async def reset(self, request: web.Request) -> web.Response:
        self.payments.clear()
        return await super().reset(request)

    def new_payment(
        self, prefix: str, key: str | None, amount_cents: int, currency: str
    ) -> Payment:
        payment = Payment(f"{prefix}_{secrets.token_hex(8)}", key, amount_cents, currency)
        payment.record("authorize", key, amount_cents)
        self.payments[payment.id] = payment
        return payment


def _declined(token: str) -> str | None:
    """The decline reason a test token asks for, or None when it pays."""
    if "declined" in token:
        return "generic_decline"
    if "insufficient" in token:
        return "insufficient_funds"
    return None


class StripeSimulator(Simulator):
    kind: Kind = "stripe"
    key_header = "Idempotency-Key"

    def operations(self) -> Mapping[str, Operation]:
        return {
            "/v1/payment_intents": self.create_intent,
            "/v1/payment_intents/{id}/capture": self.capture,
            "/v1/payment_intents/{id}/cancel": self.cancel,
            "/v1/refunds": self.refund,
        }

    async def read_body(self, request: web.Request) -> Json:
        if not request.can_read_body:
            return {}
        if request.content_type not in ("application/x-www-form-urlencoded", ""):
            raise BadBody("bodies are application/x-www-form-urlencoded")
        form = await request.post()
        return {name: str(value) for name, value in form.items()}

    def error(self, status: int, code: str, message: str, **extra: Any) -> Answer:
        kind = "api_error" if status >= 500 else extra.pop("type", "invalid_request_error")
        return status, {"error": {"type": kind, "code": code, "message": message, **extra}}

    def _amount(self, body: Json, name: str, required: bool = True) -> int | None:
        raw = body.get(name)
        if raw is None and not required:
            return None
        if raw is None or not str(raw).isdigit() or int(raw) <= 0:
            raise BadBody(f"{name} must be a positive integer in minor units")
        return int(raw)

    def _intent(self, payment: Payment) -> Json:
        status = {
            "authorized": "requires_capture",
            "captured": "succeeded",
            "voided": "canceled",
        }[payment.status]
        return {
            "id": payment.id,
            "object": "payment_intent",
            "amount": payment.amount_cents,
            "amount_received": payment.captured_cents,
            "currency": payment.currency.lower(),
            "status": status,
        }

    def create_intent(self, body: Json, _match: Mapping[str, str], key: str | None) -> Answer:
        try:
            amount = self._amount(body, "amount")
        except BadBody as error:
            return self.error(400, "parameter_invalid_integer", str(error), param="amount")
        assert amount is not None
        currency = str(body.get("currency", ""))
        if len(currency) != 3 or not currency.isalpha():
            return self.error(400, "parameter_invalid", "currency is 3 letters", param="currency")
        token = str(body.get("payment_method", ""))
        if not token.startswith(("tok_", "pm_")):
            return self.error(400, "resource_missing", "no such payment method", param="token")
        if (reason := _declined(token)) is not None:
            return self.error(
                402, "card_declined", "Your card was declined.", type="card_error",
                decline_code=reason,
            )  # fmt: skip
        payment = self.new_payment("pi", key, amount, currency.upper())
        if body.get("capture_method", "automatic") != "manual":
            payment.status, payment.captured_cents, payment.captures = "captured", amount, 1
            payment.record("capture", key, amount)
        return 200, self._intent(payment)

    def _find(self, intent_id: str) -> Payment | None:
        payment = self.payments.get(intent_id)
        return payment if payment is not None and payment.id.startswith("pi_") else None

    def capture(self, body: Json, match: Mapping[str, str], key: str | None) -> Answer:
        payment = self._find(match["id"])
        if payment is None:
            return self.error(404, "resource_missing", f"no such payment_intent: {match['id']}")
        try:
            amount = self._amount(body, "amount_to_capture", required=False)
        except BadBody as error:
            return self.error(400, "parameter_invalid_integer", str(error))
        amount = payment.amount_cents if amount is None else amount
        if payment.status != "authorized":
            return self.error(
                400, "payment_intent_unexpected_state",
                f"this PaymentIntent is {self._intent(payment)['status']}",
            )  # fmt: skip
        if amount > payment.amount_cents:
            return self.error(400, "amount_too_large", "amount_to_capture exceeds the amount")
        payment.status, payment.captured_cents = "captured", amount
        payment.captures += 1
        payment.record("capture", key, amount)
        return 200, self._intent(payment)

    def cancel(self, _body: Json, match: Mapping[str, str], key: str | None) -> Answer:
        payment = self._find(match["id"])
        if payment is None:
            return self.error(404, "resource_missing", f"no such payment_intent: {match['id']}")
        if payment.status != "authorized":
            return self.error(
                400, "payment_intent_unexpected_state",
                f"this PaymentIntent is {self._intent(payment)['status']}",
            )  # fmt: skip
        payment.status = "voided"
        payment.voids += 1
        payment.record("void", key)
        return 200, self._intent(payment)

    def refund(self, body: Json, _match: Mapping[str, str], key: str | None) -> Answer:
        payment = self._find(str(body.get("payment_intent", "")))
        if payment is None:
            return self.error(404, "resource_missing", "no such payment_intent")
        try:
            amount = self._amount(body, "amount", required=False)
        except BadBody as error:
            return self.error(400, "parameter_invalid_integer", str(error))
        left = payment.captured_cents - payment.refunded_cents
        amount = left if amount is None else amount
        if payment.status != "captured":
            return self.error(400, "charge_not_captured", "this PaymentIntent has no charge")
        if left <= 0:
            return self.error(400, "charge_already_refunded", "the charge is fully refunded")
        if amount > left:
            return self.error(400, "amount_too_large", f"at most {left} can be refunded")
        payment.refunded_cents += amount
        payment.refunds += 1
        payment.record("refund", key, amount)
        refund_id = f"re_{secrets.token_hex(8)}"
        return 200, {
            "id": refund_id,
            "object": "refund",
            "amount": amount,
            "currency": payment.currency.lower(),
            "payment_intent": payment.id,
            "status": "succeeded",
        }


@dataclass
class _Order:
    id: str
    amount_cents: int
    currency: str
    token: str
    authorization_id: str | None = None


class PayPalSimulator(Simulator):
    kind: Kind = "paypal"
    key_header = "PayPal-Request-Id"
    reused_key_status = 422

    def __init__(self, *, api_key: str | None = None, seed: int | None = None) -> None:
        super().__init__(api_key=api_key, seed=seed)
        self.client_id, self.client_secret = paypal_credentials(self.api_key)
        self.orders: dict[str, _Order] = {}
        self.captures: dict[str, str] = {}  # capture id -> authorization (payment) id
        self.tokens: dict[str, float] = {}  # access token -> when it expires (monotonic)

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_post("/v1/oauth2/token", self.token_endpoint)
        app.router.add_post("/_sim/revoke_tokens", self.revoke_tokens)
        return app

    # --- OAuth2: client credentials for access tokens -----------------------------------------

    async def token_endpoint(self, request: web.Request) -> web.Response:
        entry: Json = {"method": request.method, "path": request.path, "idempotency_key": None}
        self.requests.append(entry)
        status, body = await finish_even_if_cancelled(self._exchange(request))
        entry["status"] = status
        return web.json_response(body, status=status)

    async def _exchange(self, request: web.Request) -> Answer:
        scheme, _, encoded = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        try:
            login, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
            login = password = ""
        if scheme != "Basic" or not (
            secrets.compare_digest(login.encode(), self.client_id.encode())
            and secrets.compare_digest(password.encode(), self.client_secret.encode())
        ):
            return 401, {
                "error": "invalid_client",
                "error_description": "Client Authentication failed",
            }
        form = (
            await request.post()
            if request.content_type == "application/x-www-form-urlencoded"
            else {}
        )
        if form.get("grant_type") != "client_credentials":
            return 400, {
                "error": "unsupported_grant_type",
                "error_description": "grant_type must be client_credentials",
            }
        failure = await self.misbehave()
        if failure is not None:
            return failure
        now = time.monotonic()
        self.tokens = {t: expires for t, expires in self.tokens.items() if expires > now}
        ttl = self.behaviour.token_ttl_s
        token = f"A21AA{secrets.token_urlsafe(32)}"
        self.tokens[token] = now + ttl
        if self.behaviour.mode == "lost":
            return self.error(502, "bad_gateway", "upstream answer lost")
        return 200, {
            "scope": "https://uri.paypal.com/services/payments/payment",
            "access_token": token,
            "token_type": "Bearer",
            "app_id": "APP-SIMULATOR",
            "expires_in": ttl,
            "nonce": secrets.token_hex(16),
        }

    def authenticate(self, request: web.Request) -> Answer | None:
        scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        expires = self.tokens.get(token) if scheme == "Bearer" else None
        if expires is None:
            # The client secret (or anything else) is not a token: PayPal says the same.
            return 401, {
                "error": "invalid_token",
                "error_description": "Token signature verification failed",
            }
        if expires <= time.monotonic():
            return 401, {
                "error": "invalid_token",
                "error_description": "the access token has expired",
            }
        return None

    async def revoke_tokens(self, _request: web.Request) -> web.Response:
        revoked = len(self.tokens)
        self.tokens.clear()
        return web.json_response({"revoked": revoked})

    def operations(self) -> Mapping[str, Operation]:
        return {
            "/v2/checkout/orders": self.create_order,
            "/v2/checkout/orders/{id}/authorize": self.authorize_order,
            "/v2/payments/authorizations/{id}/capture": self.capture,
            "/v2/payments/authorizations/{id}/void": self.void,
            "/v2/payments/captures/{id}/refund": self.refund,
        }

    def idempotency_scope(self, path: str) -> str:
        return path

    async def reset(self, request: web.Request) -> web.Response:
        self.orders.clear()
        self.captures.clear()
        self.tokens.clear()
        return await super().reset(request)

    def error(self, status: int, code: str, message: str, **extra: Any) -> Answer:
        name = {
            400: "INVALID_REQUEST",
            401: "AUTHENTICATION_FAILURE",
            404: "RESOURCE_NOT_FOUND",
            422: "UNPROCESSABLE_ENTITY",
        }.get(status, "INTERNAL_SERVER_ERROR" if status >= 500 else "INVALID_REQUEST")
        return status, {
            "name": name,
            "message": message,
            "debug_id": secrets.token_hex(6),
            "details": [{"issue": code.upper(), "description": message, **extra}],
        }

    def _money(self, amount: Any, currency: str | None = None) -> tuple[int, str]:
        if not isinstance(amount, dict):
            raise BadBody("amount is an object {currency_code, value}")
        code = str(amount.get("currency_code", ""))
        if len(code) != 3 or not code.isalpha() or (currency and code.upper() != currency):
            raise BadBody("amount.currency_code is wrong")
        try:
            cents = parse_amount(amount.get("value"), code)  # type: ignore[arg-type]
        except ValueError as error:
            raise BadBody(str(error)) from None
        if cents <= 0:
            raise BadBody("amount.value must be positive")
        return cents, code.upper()

    def _amount_view(self, cents: int, currency: str) -> Json:
        return {"currency_code": currency, "value": format_amount(cents, currency)}

    def create_order(self, body: Json, _match: Mapping[str, str], _key: str | None) -> Answer:
        if body.get("intent") != "AUTHORIZE":
            return self.error(422, "unsupported_intent", "only intent AUTHORIZE is simulated")
        try:
            units = body.get("purchase_units")
            if not isinstance(units, list) or len(units) != 1:
                raise BadBody("exactly one purchase unit")
            cents, currency = self._money(units[0].get("amount"))
            token = body.get("payment_source", {}).get("token", {}).get("id")
        except (BadBody, AttributeError) as error:
            return self.error(400, "invalid_parameter_value", str(error))
        if not isinstance(token, str) or not token.startswith("tok_"):
            return self.error(400, "invalid_payment_source", "payment_source.token.id is missing")
        order = _Order(f"ORDER-{secrets.token_hex(8).upper()}", cents, currency, token)
        self.orders[order.id] = order
        return 201, {"id": order.id, "intent": "AUTHORIZE", "status": "CREATED"}

    def authorize_order(self, _body: Json, match: Mapping[str, str], key: str | None) -> Answer:
        order = self.orders.get(match["id"])
        if order is None:
            return self.error(404, "invalid_resource_id", f"order {match['id']} does not exist")
        if order.authorization_id is not None:
            return self.error(422, "order_already_authorized", "the order is authorized already")
        if (reason := _declined(order.token)) is not None:
            issue = "instrument_declined" if reason == "generic_decline" else reason
            return self.error(422, issue, "the instrument was declined")
        payment = self.new_payment("AUTH", key, order.amount_cents, order.currency)
        order.authorization_id = payment.id
        return 201, {
            "id": order.id,
            "status": "COMPLETED",
            "purchase_units": [
                {
                    "payments": {
                        "authorizations": [
                            {
                                "id": payment.id,
                                "status": "CREATED",
                                "amount": self._amount_view(order.amount_cents, order.currency),
                            }
                        ]
                    }
                }
            ],
        }

    def _authorization(self, authorization_id: str) -> Payment | None:
        payment = self.payments.get(authorization_id)
        return payment if payment is not None and payment.id.startswith("AUTH_") else None

    def capture(self, body: Json, match: Mapping[str, str], key: str | None) -> Answer:
        payment = self._authorization(match["id"])
        if payment is None:
            return self.error(404, "invalid_resource_id", "no such authorization")
        try:
            amount = payment.amount_cents
            if "amount" in body:
                amount, _ = self._money(body["amount"], payment.currency)
        except BadBody as error:
            return self.error(400, "invalid_parameter_value", str(error))
        if payment.status == "captured":
            return self.error(422, "authorization_already_captured", "already captured")
        if payment.status == "voided":
            return self.error(422, "authorization_voided", "the authorization was voided")
        if amount > payment.amount_cents:
            return self.error(422, "max_capture_amount_exceeded", "more than authorized")
        payment.status, payment.captured_cents = "captured", amount
        payment.captures += 1
        payment.capture_id = f"CAP_{secrets.token_hex(8).upper()}"
        self.captures[payment.capture_id] = payment.id
        payment.record("capture", key, amount)
        return 201, {
            "id": payment.capture_id,
            "status": "COMPLETED",
            "amount": self._amount_view(amount, payment.currency),
            "final_capture": True,
        }

    def void(self, _body: Json, match: Mapping[str, str], key: str | None) -> Answer:
        payment = self._authorization(match["id"])
        if payment is None:
            return self.error(404, "invalid_resource_id", "no such authorization")
        if payment.status != "authorized":
            return self.error(422, "cannot_be_voided", f"the authorization is {payment.status}")
        payment.status = "voided"
        payment.voids += 1
        payment.record("void", key)
        return 200, {"id": payment.id, "status": "VOIDED"}

    def refund(self, body: Json, match: Mapping[str, str], key: str | None) -> Answer:
        authorization = self.captures.get(match["id"])
        payment = None if authorization is None else self.payments[authorization]
        if payment is None:
            return self.error(404, "invalid_resource_id", "no such capture")
        left = payment.captured_cents - payment.refunded_cents
        try:
            amount = left
            if "amount" in body:
                amount, _ = self._money(body["amount"], payment.currency)
        except BadBody as error:
            return self.error(400, "invalid_parameter_value", str(error))
        if left <= 0:
            return self.error(422, "capture_fully_refunded", "the capture is fully refunded")
        if amount > left:
            return self.error(422, "refund_amount_exceeded", f"at most {left} can be refunded")
        payment.refunded_cents += amount
        payment.refunds += 1
        payment.record("refund", key, amount)
        return 201, {
            "id": f"REF_{secrets.token_hex(8).upper()}",
            "status": "COMPLETED",
            "amount": self._amount_view(amount, payment.currency),
        }


SIMULATORS: dict[str, type[Simulator]] = {"stripe": StripeSimulator, "paypal": PayPalSimulator}


def build(kind: Kind, *, api_key: str | None = None, seed: int | None = None) -> Simulator:
    return SIMULATORS[kind](api_key=api_key, seed=seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=sorted(SIMULATORS), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"stripe: the secret key (default {DEFAULT_CREDENTIALS['stripe']}); paypal: "
        f"client_id:secret (default {DEFAULT_CREDENTIALS['paypal']})",
    )
    parser.add_argument("--seed", type=int, default=None, help="for `flaky`: repeatable draws")
    args = parser.parse_args(argv)
    simulator = build(args.kind, api_key=args.api_key, seed=args.seed)
    web.run_app(simulator.app(), host=args.host, port=args.port, shutdown_timeout=1.0)


if __name__ == "__main__":
    main()
