"""Who is calling: JWT access tokens (HS256) and bcrypt password hashes.

Tokens carry `sub` (the user id), `role`, `sid` (the session they belong to, so a session
can be revoked), `type` (access or refresh: a refresh token never opens an API), `jti`,
`iat` (to the millisecond, so a token issued just after a password change outlives it) and
`exp`. Verification allows no clock leeway and refuses with a 401 that says why: expired, bad
signature, malformed, wrong type, revoked (`services.kit.revocation`, checked on every
authenticated route of every service).

Routes ask for a user through the route registry (`@api.get(..., auth=True)` or
`auth="admin"`), or any handler calls `await authenticate(request, "admin")`.

bcrypt is slow on purpose (0.24 s at cost 12 here): it runs in threads, never on the event
loop. bcrypt 5 refuses passwords over 72 bytes; that is a validation error (422) here, and
the `Password` type lets request models refuse them before they reach the hasher.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import bcrypt
import jwt
from aiohttp import hdrs, web
from cachetools import LRUCache
from pydantic import AfterValidator, Field

from services.kit.errors import (
    FieldProblem,
    Forbidden,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
)
from services.kit.revocation import MAX_ACCESS_TTL, Revocations
from services.kit.settings import JWT_SECRET_MIN_BYTES, read_secret

TokenType = Literal["access", "refresh"]
ALGORITHM = "HS256"
CLAIMS = ("sub", "role", "sid", "type", "jti", "iat", "exp")
MAX_PASSWORD_BYTES = 72  # bcrypt's limit; bcrypt 5 raises beyond it
VERIFIED_TOKENS = 50_000  # remembered per process: ~10 MB at most
T = TypeVar("T")


@dataclass(frozen=True)
class Principal:
    """The authenticated caller, from a verified token."""

    user_id: str
    role: str
    session_id: str
    token_id: str
    issued_at: float  # Unix time
    expires_at: datetime


class Tokens:
    """Issues and verifies the platform's JWTs with one HS256 secret."""

    def __init__(
        self,
        secret: bytes,
        *,
        access_ttl: timedelta = timedelta(minutes=15),
        refresh_ttl: timedelta = timedelta(hours=24),
    ) -> None:
        if len(secret) < JWT_SECRET_MIN_BYTES:
            raise ValueError(f"the JWT secret must be at least {JWT_SECRET_MIN_BYTES} bytes")
        if access_ttl > MAX_ACCESS_TTL:  # revocations are kept only that long
            raise ValueError(f"access tokens may live {MAX_ACCESS_TTL} at most")
        self._secret = secret
        self.ttl: dict[TokenType, timedelta] = {"access": access_ttl, "refresh": refresh_ttl}
        self._verified: LRUCache[tuple[str, TokenType], Principal] = LRUCache(VERIFIED_TOKENS)

    @classmethod
    def from_file(cls, path: Path, **ttls: timedelta) -> Tokens:
        return cls(read_secret(path).encode(), **ttls)

    def issue(
        self,
        user_id: str,
        role: str,
        session_id: str,
        *,
        token_type: TokenType = "access",
        ttl: timedelta | None = None,
        now: datetime | None = None,
    ) -> str:
        issued = now or datetime.now(UTC)
        claims = {
            "sub": user_id,
            "role": role,
            "sid": session_id,
            "type": token_type,
            "jti": uuid.uuid4().hex,
            "iat": round(issued.timestamp(), 3),
            "exp": issued + (ttl or self.ttl[token_type]),
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str, *, token_type: TokenType = "access") -> Principal:
        """The token's principal, or Unauthorized saying why the token is refused.

        A token verified once is remembered until it expires: the same bytes under the same
        key verify the same way, and the HMAC + JSON decoding cost ~10 % of an authenticated
        request's CPU. Expiry is still checked on every call."""
        key = (token, token_type)
        known = self._verified.get(key)
        if known is not None:
            if known.expires_at <= datetime.now(UTC):
                raise Unauthorized("token expired")
            return known
        principal = self._verify(token, token_type)
        self._verified[key] = principal
        return principal

    def _verify(self, token: str, token_type: TokenType) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],  # pinned: no "none", no algorithm confusion
                leeway=0,
                options={"require": list(CLAIMS)},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("token signature is invalid") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthorized(f"token algorithm is not {ALGORITHM}") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("token is not valid yet") from None
        except jwt.MissingRequiredClaimError as error:
            raise Unauthorized(f"token is malformed: no {error.claim!r} claim") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("token is malformed") from None
        if not all(isinstance(claims[name], str) for name in ("sub", "role", "sid", "jti")):
            raise Unauthorized("token is malformed: sub, role, sid and jti must be strings")
        if not isinstance(claims["iat"], int | float):
            raise Unauthorized("token is malformed: iat must be a number")
        if claims["type"] != token_type:
            raise Unauthorized(f"wrong token type: expected {token_type}, got {claims['type']!r}")
        return Principal(
            user_id=claims["sub"],
            role=claims["role"],
            session_id=claims["sid"],
            token_id=claims["jti"],
            issued_at=float(claims["iat"]),
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        )


class ServiceToken:
    """A service's own access token for its calls to peers (the saga's), issued again once
    half its lifetime has passed. One token per call cost an HMAC to sign here and one to
    verify at the peer, and no peer's cache of verified tokens ever saw the same token twice.

    Each token names a session of its own (random), so a leaked one can be revoked like a
    user's (`Revocations.end_session`) without stopping the service: `renew()` after a 401."""

    def __init__(self, tokens: Tokens, service: str) -> None:
        self._tokens = tokens
        self._service = service
        self._token = ""
        self._renew_at = datetime.min.replace(tzinfo=UTC)

    def __call__(self, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        if now >= self._renew_at:
            session = f"service-{secrets.token_urlsafe(12)}"
            self._token = self._tokens.issue(self._service, "service", session, now=now)
            self._renew_at = now + self._tokens.ttl["access"] / 2
        return self._token

    def renew(self) -> None:
        """The next call issues a new token (a peer refused this one)."""
        self._renew_at = datetime.min.replace(tzinfo=UTC)


TOKENS = web.AppKey("tokens", Tokens)
REVOCATIONS = web.AppKey("revocations", Revocations)
PRINCIPAL = web.RequestKey("principal", Principal)


def bearer_token(request: web.Request) -> str:
    scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token")
    return token.strip()


async def authenticate(request: web.Request, roles: Iterable[str] = ()) -> Principal:
    """The request's verified caller (401 otherwise, revoked tokens included; 503 when the
    revocations cannot be read), holding one of `roles` if any are given (403 otherwise).
    Verified once per request, then kept on the request."""
    principal = request.get(PRINCIPAL)
    if principal is None:
        principal = request.config_dict[TOKENS].verify(bearer_token(request))
        await request.config_dict[REVOCATIONS].refuse_if_revoked(
            principal.user_id, principal.session_id, principal.issued_at
        )
        request[PRINCIPAL] = principal
    allowed = tuple(roles)
    if allowed and principal.role not in allowed:
        raise Forbidden(f"requires role {' or '.join(allowed)}")
    return principal


# --- passwords -------------------------------------------------------------------------------


def password_problem(password: str) -> str | None:
    size = len(password.encode())
    if size > MAX_PASSWORD_BYTES:
        return f"must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8, got {size}"
    return None


def _fits_bcrypt(password: str) -> str:
    if (problem := password_problem(password)) is not None:
        raise ValueError(problem)
    return password


# For request models: `password: Password` answers 422 naming the field before any hashing.
Password = Annotated[str, Field(min_length=8), AfterValidator(_fits_bcrypt)]


class PasswordHasher:
    """bcrypt off the event loop, in threads of its own (bcrypt releases the GIL), and bounded.

    One thread per core by default: more would only queue CPU work, and a separate pool
    keeps logins from delaying what else uses the loop's default executor (DNS lookups).
    At most `pending_per_core` hashes per thread wait or run at once: beyond that a caller
    gets a 503 with Retry-After at once, instead of every login queueing past the gateway's
    timeout (48 concurrent logins at cost 12 made them all time out, 504). At cost 12
    (~0.25 s per hash here) 4 per core is at most about a second of queueing."""

    def __init__(
        self, rounds: int = 12, executor: Executor | None = None, *, pending_per_core: int = 4
    ) -> None:
        self.rounds = rounds
        threads = os.cpu_count() or 1
        self.executor = executor or ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="bcrypt"
        )
        self.max_pending = threads * pending_per_core
        self.pending = 0
        # Made now, so the first unknown address costs what every later one does.
        self._dummy = bcrypt.hashpw(secrets.token_urlsafe(16).encode(), bcrypt.gensalt(rounds))

    async def hash(self, password: str, *, field: str = "body.password") -> str:
        secret = self._encode(password, field)
        hashed = await self._run(bcrypt.hashpw, secret, bcrypt.gensalt(self.rounds))
        return hashed.decode()

    async def verify(
        self, password: str, hashed: str | None, *, field: str = "body.password"
    ) -> bool:
        """Whether `password` matches `hashed`. With `hashed=None` (no such user) it still
        spends a hash's time, so response times do not tell which accounts exist."""
        secret = self._encode(password, field)
        if hashed is None:
            await self._run(bcrypt.checkpw, secret, self._dummy)
            return False
        return await self._run(bcrypt.checkpw, secret, hashed.encode())

    @staticmethod
    def _encode(password: str, field: str) -> bytes:
        if (problem := password_problem(password)) is not None:
            raise ValidationFailed([FieldProblem(field=field, problem=problem)])
        return password.encode()

    async def _run(self, function: Callable[..., T], *args: bytes) -> T:
        if self.pending >= self.max_pending:
            raise ServiceUnavailable(
                "too many password checks at once; try again in a second", retry_after_s=1
            )
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)
        finally:
            self.pending -= 1
