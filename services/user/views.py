"""The user service's API: /api/users/...

Nothing here tells an outsider which addresses have an account: registering, logging in and
asking for a reset answer alike, in body and in time, whether the address is known or not.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Annotated, Literal

from aiohttp import web
from pydantic import AfterValidator, BaseModel, Field

from services.kit.api import Api
from services.kit.auth import REVOCATIONS, TOKENS, Password, PasswordHasher, Principal
from services.kit.errors import BadRequest, NotFound, TooManyRequests, Unauthorized
from services.user.accounts import Accounts, Email
from services.user.sessions import Sessions, Throttle

api = Api("user", version="1.0.0", description="Accounts, logins, sessions and profiles")

ACCOUNTS = web.AppKey("accounts", Accounts)
SESSIONS = web.AppKey("sessions", Sessions)
LOGIN_THROTTLE = web.AppKey("login_throttle", Throttle)
RESET_THROTTLE = web.AppKey("reset_throttle", Throttle)
HASHER = web.AppKey("hasher", PasswordHasher)
# A reset request answers no sooner than this: the work for a known address (two inserts)
# then takes as long as the lookup of an unknown one.
RESET_ANSWER_FLOOR_S = 0.15


def _policy(password: str) -> str:
    """At least 10 characters, with a letter and a digit (bcrypt's 72-byte cap applies too)."""
    if len(password) < 10:
        raise ValueError("must be at least 10 characters")
    if not re.search(r"[A-Za-z]", password) or not re.search(r"\d", password):
        raise ValueError("must contain a letter and a digit")
    return password


NewPassword = Annotated[Password, AfterValidator(_policy)]


class Registration(BaseModel):
    email: Email
    password: NewPassword
    full_name: str = Field(default="", max_length=200)


class Profile(BaseModel):
    id: int
    email: str
    full_name: str
    role: Literal["customer", "admin"]
    created_at: str
    updated_at: str


class Accepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    message: str


class Login(BaseModel):
    email: Email
    password: Password


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="seconds the access token is valid")


class Refresh(BaseModel):
    refresh_token: str = Field(min_length=10, max_length=200)


class ProfileChange(BaseModel):
    full_name: str = Field(max_length=200)


class PasswordChange(BaseModel):
    current_password: Password
    new_password: NewPassword


class ResetRequest(BaseModel):
    email: Email


class ResetConfirmation(BaseModel):
    token: str = Field(min_length=20, max_length=100)
    new_password: NewPassword


def _client_address(request: web.Request) -> str:
    """The shopper's address, as the gateway saw it: it replaces any X-Forwarded-For a client
    sends with one address (`components.conf.haproxy`), and only the gateway may reach the
    service (network policies). Without the header: the peer's address."""
    forwarded = request.headers.getall("X-Forwarded-For", [])
    if len(forwarded) == 1 and "," not in forwarded[0] and forwarded[0].strip():
        return forwarded[0].strip()
    return request.remote or "unknown"


async def _tokens(request: web.Request, user_id: int, role: str) -> TokenPair:
    session, refresh_token = await request.app[SESSIONS].create(user_id, role)
    tokens = request.app[TOKENS]
    access = tokens.issue(str(user_id), role, session.sid)
    return TokenPair(
        access_token=access,
        refresh_token=refresh_token,
        expires_in=int(tokens.ttl["access"].total_seconds()),
    )


async def _end_every_session(request: web.Request, user_id: int) -> None:
    """Every session of the account ends, and every token issued until now stops working on
    every service (password change or reset, an admin's order)."""
    await request.app[SESSIONS].end_all(user_id)
    await request.app[REVOCATIONS].end_all(str(user_id))


REGISTERED = (
    "if this address had no account, it has one now: log in with it; "
    "if it had one, log in with its password or reset it"
)


@api.post("/api/users/register", body=Registration, response=Accepted, status=202)
async def register(request: web.Request, body: Registration) -> Accepted:
    """Create an account.

    Answered alike (202) for a new and for a known address, after the same bcrypt work, so
    the endpoint does not tell who has an account; a known address keeps its password."""
    hashed = await request.app[HASHER].hash(body.password)
    await request.app[ACCOUNTS].register(body.email, hashed, body.full_name)
    return Accepted(message=REGISTERED)


@api.post(
    "/api/users/login", body=Login, response=TokenPair, errors=[Unauthorized, TooManyRequests]
)
async def login(request: web.Request, body: Login) -> TokenPair:
    """Log in: a short-lived access token and a refresh token.

    Failed attempts are limited per account and per client address. An unknown address
    costs the same bcrypt work as a wrong password, so the answer's time tells nothing."""
    throttle, address = request.app[LOGIN_THROTTLE], _client_address(request)
    if wait := await throttle.retry_after(body.email, address):
        raise TooManyRequests(wait, "too many failed logins; try again later")
    account = await request.app[ACCOUNTS].credentials(body.email)
    hashed = account.password_hash if account else None
    matches = await request.app[HASHER].verify(body.password, hashed)
    if account is None or not matches:
        await throttle.count(body.email, address)
        raise Unauthorized("email or password is wrong")
    await throttle.clear_account(body.email)
    return await _tokens(request, account.user_id, account.role)


@api.post("/api/users/refresh", body=Refresh, response=TokenPair, errors=[Unauthorized])
async def refresh(request: web.Request, body: Refresh) -> TokenPair:
    """Trade a refresh token for a new pair (the old refresh token stops working)."""
    rotated = await request.app[SESSIONS].rotate(body.refresh_token)
    if rotated is None:
        raise Unauthorized("refresh token is invalid or its session has ended")
    session, refresh_token = rotated
    tokens = request.app[TOKENS]
    return TokenPair(
        access_token=tokens.issue(str(session.user_id), session.role, session.sid),
        refresh_token=refresh_token,
        expires_in=int(tokens.ttl["access"].total_seconds()),
    )


@api.post("/api/users/logout", auth=True)
async def logout(request: web.Request, user: Principal) -> None:
    """End this session: its access and refresh tokens stop working on every service."""
    await request.app[SESSIONS].end(int(user.user_id), user.session_id)
    await request.app[REVOCATIONS].end_session(user.user_id, user.session_id)


@api.get("/api/users/me", response=Profile, auth=True, errors=[NotFound])
async def me(request: web.Request, user: Principal) -> Profile:
    """The logged-in user's profile."""
    found = await request.app[ACCOUNTS].profile(int(user.user_id))
    if found is None:
        raise NotFound("account not found")
    return Profile.model_validate(found)


@api.patch("/api/users/me", body=ProfileChange, response=Profile, auth=True, errors=[NotFound])
async def update_me(request: web.Request, body: ProfileChange, user: Principal) -> Profile:
    """Change the logged-in user's profile."""
    updated = await request.app[ACCOUNTS].update_profile(int(user.user_id), body.full_name)
    if updated is None:
        raise NotFound("account not found")
    return Profile.model_validate(updated)


@api.post("/api/users/me/password", body=PasswordChange, auth=True, errors=[Unauthorized])
async def change_password(request: web.Request, body: PasswordChange, user: Principal) -> None:
    """Change the password; every session of the account ends, this one included."""
    user_id = int(user.user_id)
    accounts, hasher = request.app[ACCOUNTS], request.app[HASHER]
    current = await accounts.password_hash(user_id)
    if not await hasher.verify(body.current_password, current, field="body.current_password"):
        raise Unauthorized("current password is wrong")
    await accounts.set_password(
        user_id, await hasher.hash(body.new_password, field="body.new_password")
    )
    await _end_every_session(request, user_id)


RESET_SENT = "if this address has an account, a reset link is on its way"


@api.post(
    "/api/users/password-reset",
    body=ResetRequest,
    response=Accepted,
    status=202,
    errors=[TooManyRequests],
)
async def request_reset(request: web.Request, body: ResetRequest) -> Accepted:
    """Send a single-use reset link (answered the same, in body and time, whether or not
    the account exists). Limited per address asked for and per client address."""
    started = time.monotonic()
    throttle, address = request.app[RESET_THROTTLE], _client_address(request)
    if wait := await throttle.retry_after(body.email, address):
        raise TooManyRequests(wait, "too many reset requests; try again later")
    await throttle.count(body.email, address)
    await request.app[ACCOUNTS].start_reset(body.email)
    await asyncio.sleep(max(0.0, RESET_ANSWER_FLOOR_S - (time.monotonic() - started)))
    return Accepted(message=RESET_SENT)


@api.post("/api/users/password-reset/confirm", body=ResetConfirmation, errors=[BadRequest])
async def confirm_reset(request: web.Request, body: ResetConfirmation) -> None:
    """Set a new password with a reset token; it works once, within 30 minutes. The token
    is checked before the new password is hashed: a bogus one costs no bcrypt work."""
    accounts = request.app[ACCOUNTS]
    if not await accounts.reset_is_open(body.token):
        raise BadRequest("reset token is invalid, used or expired")
    hashed = await request.app[HASHER].hash(body.new_password, field="body.new_password")
    user_id = await accounts.finish_reset(body.token, hashed)
    if user_id is None:  # used by a concurrent request meanwhile
        raise BadRequest("reset token is invalid, used or expired")
    await _end_every_session(request, user_id)


class UserPath(BaseModel):
    user_id: int = Field(ge=1, le=2**63 - 1)


@api.post("/api/users/{user_id}/sessions/revoke", path_params=UserPath, auth="admin")
async def revoke_sessions(request: web.Request, path_params: UserPath, user: Principal) -> None:
    """End every session of a user (a stolen device, a compromised account): their tokens
    stop working on every service within seconds."""
    await _end_every_session(request, path_params.user_id)
