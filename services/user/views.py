"""The user service's API: /api/users/..."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from aiohttp import web
from pydantic import AfterValidator, BaseModel, EmailStr, Field

from services.kit.api import Api
from services.kit.auth import TOKENS, Password, PasswordHasher, Principal
from services.kit.errors import BadRequest, Conflict, NotFound, TooManyRequests, Unauthorized
from services.user.accounts import Accounts, EmailTaken
from services.user.sessions import LoginThrottle, Sessions

api = Api("user", version="1.0.0", description="Accounts, logins, sessions and profiles")

ACCOUNTS = web.AppKey("accounts", Accounts)
SESSIONS = web.AppKey("sessions", Sessions)
THROTTLE = web.AppKey("throttle", LoginThrottle)
HASHER = web.AppKey("hasher", PasswordHasher)


def _policy(password: str) -> str:
    """At least 10 characters, with a letter and a digit (bcrypt's 72-byte cap applies too)."""
    if len(password) < 10:
        raise ValueError("must be at least 10 characters")
    if not re.search(r"[A-Za-z]", password) or not re.search(r"\d", password):
        raise ValueError("must contain a letter and a digit")
    return password


NewPassword = Annotated[Password, AfterValidator(_policy)]


class Registration(BaseModel):
    email: EmailStr
    password: NewPassword
    full_name: str = Field(default="", max_length=200)


class Profile(BaseModel):
    id: int
    email: str
    full_name: str
    role: Literal["customer", "admin"]
    created_at: str
    updated_at: str


class Login(BaseModel):
    email: EmailStr
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
    email: EmailStr


class ResetConfirmation(BaseModel):
    token: str = Field(min_length=20, max_length=100)
    new_password: NewPassword


def _client_address(request: web.Request) -> str:
    """The shopper's address: the last X-Forwarded-For hop, which the gateway appends."""
    forwarded = request.headers.get("X-Forwarded-For", "")
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    return hops[-1] if hops else (request.remote or "unknown")


async def _tokens(request: web.Request, user_id: int, role: str) -> TokenPair:
    session, refresh_token = await request.app[SESSIONS].create(user_id, role)
    tokens = request.app[TOKENS]
    access = tokens.issue(str(user_id), role, session.sid)
    return TokenPair(
        access_token=access,
        refresh_token=refresh_token,
        expires_in=int(tokens.ttl["access"].total_seconds()),
    )


async def _live_session(request: web.Request, user: Principal) -> int:
    """The user's id, once the session behind the token is known to be still open."""
    user_id = int(user.user_id)
    if await request.app[SESSIONS].get(user_id, user.session_id) is None:
        raise Unauthorized("session ended: log in again")
    return user_id


@api.post("/api/users/register", body=Registration, response=Profile, status=201, errors=[Conflict])
async def register(request: web.Request, body: Registration) -> Profile:
    """Create an account."""
    hashed = await request.app[HASHER].hash(body.password)
    try:
        created = await request.app[ACCOUNTS].register(body.email, hashed, body.full_name)
    except EmailTaken:
        raise Conflict("an account with this email already exists") from None
    return Profile.model_validate(created)


@api.post(
    "/api/users/login", body=Login, response=TokenPair, errors=[Unauthorized, TooManyRequests]
)
async def login(request: web.Request, body: Login) -> TokenPair:
    """Log in: a short-lived access token and a refresh token.

    Failed attempts are limited per account and per client address."""
    throttle, address = request.app[THROTTLE], _client_address(request)
    if wait := await throttle.retry_after(body.email, address):
        raise TooManyRequests(wait, "too many failed logins; try again later")
    account = await request.app[ACCOUNTS].credentials(body.email)
    hashed = account.password_hash if account else None
    if account is None or not await request.app[HASHER].verify(body.password, hashed):
        await throttle.failed(body.email, address)
        raise Unauthorized("email or password is wrong")
    await throttle.succeeded(body.email)
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
    """End this session: its access and refresh tokens stop working."""
    await request.app[SESSIONS].end(int(user.user_id), user.session_id)


@api.get("/api/users/me", response=Profile, auth=True, errors=[NotFound])
async def me(request: web.Request, user: Principal) -> Profile:
    """The logged-in user's profile."""
    found = await request.app[ACCOUNTS].profile(await _live_session(request, user))
    if found is None:
        raise NotFound("account not found")
    return Profile.model_validate(found)


@api.patch("/api/users/me", body=ProfileChange, response=Profile, auth=True, errors=[NotFound])
async def update_me(request: web.Request, body: ProfileChange, user: Principal) -> Profile:
    """Change the logged-in user's profile."""
    updated = await request.app[ACCOUNTS].update_profile(
        await _live_session(request, user), body.full_name
    )
    if updated is None:
        raise NotFound("account not found")
    return Profile.model_validate(updated)


@api.post("/api/users/me/password", body=PasswordChange, auth=True, errors=[Unauthorized])
async def change_password(request: web.Request, body: PasswordChange, user: Principal) -> None:
    """Change the password; every session of the account ends, this one included."""
    user_id = await _live_session(request, user)
    accounts, hasher = request.app[ACCOUNTS], request.app[HASHER]
    current = await accounts.password_hash(user_id)
    if not await hasher.verify(body.current_password, current, field="body.current_password"):
        raise Unauthorized("current password is wrong")
    await accounts.set_password(
        user_id, await hasher.hash(body.new_password, field="body.new_password")
    )
    await request.app[SESSIONS].end_all(user_id)


@api.post("/api/users/password-reset", body=ResetRequest, status=202)
async def request_reset(request: web.Request, body: ResetRequest) -> web.Response:
    """Send a single-use reset link (answered the same whether or not the account exists)."""
    await request.app[ACCOUNTS].start_reset(body.email)
    return web.json_response({"status": "accepted"}, status=202)


@api.post("/api/users/password-reset/confirm", body=ResetConfirmation, errors=[BadRequest])
async def confirm_reset(request: web.Request, body: ResetConfirmation) -> None:
    """Set a new password with a reset token; it works once, within 30 minutes."""
    hashed = await request.app[HASHER].hash(body.new_password, field="body.new_password")
    user_id = await request.app[ACCOUNTS].finish_reset(body.token, hashed)
    if user_id is None:
        raise BadRequest("reset token is invalid, used or expired")
    await request.app[SESSIONS].end_all(user_id)
