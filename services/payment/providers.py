"""The payment providers behind one small protocol, and what their errors mean to us.

    provider = StripeProvider("https://api.stripe.com", api_key, session)
    auth = await provider.authorize(2599, "USD", "tok_...", idempotency_key="order-42:authorize")
    capture = await provider.capture(auth.reference, "order-42:capture")
    await provider.refund(capture.reference, 500, "USD", "order-42:refund:1")

Every error a provider call can end in is one of two kinds:

- `TransientError`: the call may not have happened or may have failed for reasons that pass
  (timeouts, connection errors, 5xx, 429, 409 "idempotency key in use"). Retry it with the
  same idempotency key, or try another provider.
- `PermanentError`: the provider understood and said no (a declined card, an invalid
  request, a capture of a voided authorization). Retrying or failing over cannot help;
  trying another provider after a decline would be working around the bank's answer.

Amounts are integers in the currency's minor unit (`amount_cents`; whole yen for JPY).
Only provider tokens cross this boundary, never card numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from services.payment.money import format_amount, parse_amount

DEFAULT_TIMEOUT_S = 5.0  # per HTTP call; the router's budget bounds the whole operation
CONNECT_TIMEOUT_S = 1.0


class PaymentError(Exception):
    """A provider call that did not succeed. `code` is short and machine-readable."""

    def __init__(self, provider: str, code: str, message: str, status: int | None = None):
        self.provider = provider
        self.code = code
        self.status = status
        super().__init__(f"{provider}: {code}: {message}")


class TransientError(PaymentError):
    """Worth retrying with the same idempotency key, or on another provider."""


class PermanentError(PaymentError):
    """The provider's final answer: no retry, no failover."""


class Declined(PermanentError):
    """The customer's payment method was refused (`code`: generic_decline, insufficient_funds)."""


@dataclass(frozen=True)
class Authorization:
    provider: str
    reference: str  # what capture and void take: Stripe's PaymentIntent, PayPal's authorization
    amount_cents: int
    currency: str


@dataclass(frozen=True)
class Capture:
    provider: str
    reference: str  # what refund takes: Stripe's PaymentIntent, PayPal's capture
    amount_cents: int


@dataclass(frozen=True)
class Void:
    provider: str
    reference: str


@dataclass(frozen=True)
class Refund:
    provider: str
    reference: str
    amount_cents: int


class Provider(Protocol):
    name: str

    async def authorize(
        self, amount_cents: int, currency: str, token: str, idempotency_key: str
    ) -> Authorization: ...

    async def capture(self, authorization: str, idempotency_key: str) -> Capture:
        """Capture the whole authorized amount."""
        ...

    async def void(self, authorization: str, idempotency_key: str) -> Void: ...

    async def refund(
        self, capture: str, amount_cents: int, currency: str, idempotency_key: str
    ) -> Refund:
        """Refund part or all of a capture (several refunds may follow each other)."""
        ...

    async def close(self) -> None: ...


def _transient_status(status: int) -> bool:
    # 408 request timeout, 409 "a request with this key is in progress", 429 rate limited.
    return status >= 500 or status in (408, 409, 429)


class _HttpProvider:
    """An HTTP client with timeouts and the provider-independent part of error mapping."""

    name: str
    key_header: str

    def __init__(
        self,
        base_url: str,
        api_key: str,
        session: aiohttp.ClientSession | None = None,
        *,
        name: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.name = name or self.name
        self.timeout = aiohttp.ClientTimeout(
            total=timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)
        )
        self._session = session
        self._own_session = session is None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._own_session = True
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()

    async def _post(
        self, path: str, idempotency_key: str, *, form: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> Any:  # fmt: skip
        headers = {"Authorization": f"Bearer {self.api_key}", self.key_header: idempotency_key}
        try:
            async with self.session.post(
                self.base_url + path, data=form, json=json, headers=headers, timeout=self.timeout
            ) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
                status = response.status
        except TimeoutError:
            raise TransientError(self.name, "timeout", f"no answer to POST {path}") from None
        except aiohttp.ClientError as error:
            raise TransientError(
                self.name, "connection", f"POST {path}: {type(error).__name__}"
            ) from None
        if status >= 400:
            raise self._error(status, body if isinstance(body, dict) else {})
        return body

    def _error(self, status: int, body: dict[str, Any]) -> PaymentError:
        raise NotImplementedError


class StripeProvider(_HttpProvider):
    """A Stripe-like API: form bodies, `Idempotency-Key`, PaymentIntents with manual capture."""

    name = "stripe"
    key_header = "Idempotency-Key"

    def _error(self, status: int, body: dict[str, Any]) -> PaymentError:
        error = body.get("error") or {}
        code = str(error.get("decline_code") or error.get("code") or f"http_{status}")
        message = str(error.get("message") or "no message")
        if _transient_status(status):
            return TransientError(self.name, code, message, status)
        if error.get("type") == "card_error":
            return Declined(self.name, code, message, status)
        return PermanentError(self.name, code, message, status)

    async def authorize(
        self, amount_cents: int, currency: str, token: str, idempotency_key: str
    ) -> Authorization:
        intent = await self._post(
            "/v1/payment_intents",
            idempotency_key,
            form={
                "amount": str(amount_cents),
                "currency": currency.lower(),
                "payment_method": token,
                "capture_method": "manual",
                "confirm": "true",
            },
        )
        return Authorization(self.name, intent["id"], intent["amount"], currency.upper())

    async def capture(self, authorization: str, idempotency_key: str) -> Capture:
        intent = await self._post(f"/v1/payment_intents/{authorization}/capture", idempotency_key)
        return Capture(self.name, intent["id"], intent["amount_received"])

    async def void(self, authorization: str, idempotency_key: str) -> Void:
        intent = await self._post(f"/v1/payment_intents/{authorization}/cancel", idempotency_key)
        return Void(self.name, intent["id"])

    async def refund(
        self, capture: str, amount_cents: int, currency: str, idempotency_key: str
    ) -> Refund:
        refund = await self._post(
            "/v1/refunds",
            idempotency_key,
            form={"payment_intent": capture, "amount": str(amount_cents)},
        )
        return Refund(self.name, refund["id"], refund["amount"])


class PayPalProvider(_HttpProvider):
    """A PayPal-like API: JSON bodies, decimal amounts, `PayPal-Request-Id`; an authorization
    is an order created with intent AUTHORIZE and then authorized (two calls, one key)."""

    name = "paypal"
    key_header = "PayPal-Request-Id"

    def _error(self, status: int, body: dict[str, Any]) -> PaymentError:
        details = body.get("details") or [{}]
        issue = str(details[0].get("issue") or body.get("name") or f"HTTP_{status}").lower()
        message = str(body.get("message") or "no message")
        if _transient_status(status):
            return TransientError(self.name, issue, message, status)
        if issue in ("instrument_declined", "insufficient_funds", "payer_cannot_pay"):
            code = "generic_decline" if issue == "instrument_declined" else issue
            return Declined(self.name, code, message, status)
        return PermanentError(self.name, issue, message, status)

    async def authorize(
        self, amount_cents: int, currency: str, token: str, idempotency_key: str
    ) -> Authorization:
        currency = currency.upper()
        # The same key on both calls: the provider scopes request ids to the call, so a retry
        # of either finds its first answer (a retried authorize reuses the same order).
        order = await self._post(
            "/v2/checkout/orders",
            idempotency_key,
            json={
                "intent": "AUTHORIZE",
                "purchase_units": [
                    {
                        "amount": {
                            "currency_code": currency,
                            "value": format_amount(amount_cents, currency),
                        }
                    }
                ],
                "payment_source": {"token": {"id": token, "type": "BILLING_AGREEMENT"}},
            },
        )
        authorized = await self._post(
            f"/v2/checkout/orders/{order['id']}/authorize", idempotency_key
        )
        authorization = authorized["purchase_units"][0]["payments"]["authorizations"][0]
        return Authorization(self.name, authorization["id"], amount_cents, currency)

    async def capture(self, authorization: str, idempotency_key: str) -> Capture:
        captured = await self._post(
            f"/v2/payments/authorizations/{authorization}/capture",
            idempotency_key,
            json={"final_capture": True},
        )
        return Capture(self.name, captured["id"], _minor(captured["amount"]))

    async def void(self, authorization: str, idempotency_key: str) -> Void:
        voided = await self._post(
            f"/v2/payments/authorizations/{authorization}/void", idempotency_key
        )
        return Void(self.name, voided["id"])

    async def refund(
        self, capture: str, amount_cents: int, currency: str, idempotency_key: str
    ) -> Refund:
        refunded = await self._post(
            f"/v2/payments/captures/{capture}/refund",
            idempotency_key,
            json={
                "amount": {
                    "currency_code": currency.upper(),
                    "value": format_amount(amount_cents, currency),
                }
            },
        )
        return Refund(self.name, refunded["id"], _minor(refunded["amount"]))


def _minor(amount: Mapping[str, str]) -> int:
    return parse_amount(amount["value"], amount["currency_code"])
