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

Credentials: Stripe takes its secret API key as the bearer token of every call. PayPal takes
OAuth2 client credentials, `client_id:secret` on one line (the whole of PAYPAL_API_KEY_FILE,
the `paypalApiKey` secret), which `PayPalProvider` exchanges for an access token.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from services.kit.logs import get_logger
from services.kit.resilience import Transient
from services.payment.money import format_amount, parse_amount

log = get_logger(__name__)

DEFAULT_TIMEOUT_S = 5.0  # per HTTP call; the router's budget bounds the whole operation
CONNECT_TIMEOUT_S = 1.0
# An access token is renewed this long before it expires (a tenth of its life if shorter), so a
# call never leaves with a token that dies on the way.
RENEW_BEFORE_S = 60.0


class PaymentError(Exception):
    """A provider call that did not succeed. `code` is short and machine-readable."""

    def __init__(self, provider: str, code: str, message: str, status: int | None = None):
        self.provider = provider
        self.code = code
        self.status = status
        super().__init__(f"{provider}: {code}: {message}")


class TransientError(PaymentError, Transient):
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

    async def _authorization(self) -> str:
        """The `Authorization` header of the next call."""
        return f"Bearer {self.api_key}"

    async def _renewed(self, refused: str) -> bool:
        """A call sent with `refused` was answered 401: whether a new authorization may help
        (then the call is sent once more)."""
        return False

    async def _post(
        self, path: str, idempotency_key: str, *, form: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> Any:  # fmt: skip
        authorization = await self._authorization()
        status, body = await self._send(path, authorization, idempotency_key, form, json)
        if status == 401 and await self._renewed(authorization):
            # Refused before anything was done: safe to send again (with the same key anyway).
            authorization = await self._authorization()
            status, body = await self._send(path, authorization, idempotency_key, form, json)
        if status >= 400:
            raise self._error(status, body)
        return body

    async def _send(
        self,
        path: str,
        authorization: str,
        idempotency_key: str | None,
        form: Mapping[str, Any] | None,
        json: Any,
    ) -> tuple[int, dict[str, Any]]:
        """One POST: its status and its JSON object body ({} when it has none)."""
        headers = {"Authorization": authorization}
        if idempotency_key is not None:
            headers[self.key_header] = idempotency_key
        try:
            async with self.session.post(
                self.base_url + path,
                data=form,
                json=json,
                headers=headers,
                timeout=self.timeout,
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
        return status, body if isinstance(body, dict) else {}

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


def paypal_credentials(text: str) -> tuple[str, str]:
    """`client_id:secret` (what PAYPAL_API_KEY_FILE holds) as (client_id, secret)."""
    client_id, colon, secret = text.strip().partition(":")
    if not colon or not client_id or not secret or any(c.isspace() for c in text.strip()):
        raise ValueError("expected client_id:secret on one line")
    return client_id, secret


@dataclass(frozen=True)
class _AccessToken:
    header: str  # "Bearer <access token>"
    renew_at: float  # time.monotonic()


class PayPalProvider(_HttpProvider):
    """A PayPal-like API: JSON bodies, decimal amounts, `PayPal-Request-Id`; an authorization
    is an order created with intent AUTHORIZE and then authorized (two calls, one key).

    `credentials` is `client_id:secret`. Calls carry an OAuth2 access token, got by the client
    credentials grant (`POST /v1/oauth2/token`, HTTP Basic client_id:secret, form
    `grant_type=client_credentials`) and kept until shortly before its `expires_in`. A call
    answered 401 (the token was revoked or expired early) drops the token, gets a new one and
    is sent once more. Concurrent calls that need a token share one exchange, whose result
    (a token or an error) they all get. Refused credentials are a `PermanentError`
    `invalid_client`: no retry can help until the secret is fixed."""

    name = "paypal"
    key_header = "PayPal-Request-Id"

    def __init__(
        self,
        base_url: str,
        credentials: str,
        session: aiohttp.ClientSession | None = None,
        *,
        name: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        client_id, secret = paypal_credentials(credentials)
        super().__init__(base_url, secret, session, name=name, timeout_s=timeout_s)
        self._client = aiohttp.encode_basic_auth(client_id, secret)  # the exchange's header
        self._token: _AccessToken | None = None
        self._exchange: asyncio.Task[_AccessToken] | None = None

    async def close(self) -> None:
        if self._exchange is not None:
            self._exchange.cancel()
            with contextlib.suppress(asyncio.CancelledError, PaymentError):
                await self._exchange
        await super().close()

    async def _authorization(self) -> str:
        token = self._token
        if token is None or time.monotonic() >= token.renew_at:
            if self._exchange is None:
                self._exchange = asyncio.create_task(self._exchange_credentials())
                # Retrieved even when every caller gave up waiting (no "never retrieved").
                self._exchange.add_done_callback(lambda task: task.cancelled() or task.exception())
            # Shielded: a caller that runs out of time does not cancel the others' exchange,
            # which its own HTTP timeout bounds.
            token = await asyncio.shield(self._exchange)
        return token.header

    async def _renewed(self, refused: str) -> bool:
        if self._token is not None and self._token.header == refused:
            self._token = None  # unless a concurrent call renewed it already
        return True

    async def _exchange_credentials(self) -> _AccessToken:
        try:
            started = time.monotonic()
            status, body = await self._send(
                "/v1/oauth2/token",
                self._client,
                None,
                {"grant_type": "client_credentials"},
                None,
            )
            if status != 200:
                raise self._token_error(status, body)
            token, expires_in = body.get("access_token"), body.get("expires_in")
            if not (isinstance(token, str) and token and isinstance(expires_in, int | float)):
                raise TransientError(
                    self.name, "bad_token_answer", "no access_token and expires_in in the answer"
                )
            expires_in = max(float(expires_in), 0.0)
            margin = min(RENEW_BEFORE_S, expires_in / 10)
            self._token = _AccessToken(f"Bearer {token}", started + expires_in - margin)
            return self._token
        finally:
            self._exchange = None

    def _token_error(self, status: int, body: dict[str, Any]) -> PaymentError:
        code = str(body.get("error") or f"http_{status}").lower()
        message = str(body.get("error_description") or "no message")
        if _transient_status(status):
            return TransientError(self.name, code, message, status)
        if code == "invalid_client" or status == 401:
            log.error("paypal refused the client credentials", provider=self.name, code=code)
            return PermanentError(
                self.name,
                "invalid_client",
                f"the client credentials (client_id:secret) were refused: {message}",
                status,
            )
        return PermanentError(self.name, code, message, status)

    def _error(self, status: int, body: dict[str, Any]) -> PaymentError:
        if isinstance(body.get("error"), str):  # OAuth's shape: a refused access token
            code, message = body["error"].lower(), str(body.get("error_description") or "")
            if _transient_status(status):
                return TransientError(self.name, code, message or "no message", status)
            return PermanentError(self.name, code, message or "no message", status)
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
