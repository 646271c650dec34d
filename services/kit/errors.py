"""Every error a service answers, as one JSON shape, and the one middleware that makes it.

    {"error": "not_found", "message": "product 42 does not exist", "request_id": "..."}
    {"error": "validation_failed", "message": "...", "request_id": "...",
     "fields": [{"field": "body.items.0.quantity", "problem": "Input should be greater than 0"}]}

Services raise the typed errors below (or subclasses of `ApiError` with their own status and
code). aiohttp's own HTTP errors (unknown route, wrong method, body too large) get the same
shape. Anything else is a bug: it is logged with its traceback and answered as a generic 500
that never carries the exception's text.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping

from aiohttp import hdrs, web
from pydantic import BaseModel, Field, ValidationError

from services.kit.logs import current_request_id, get_logger

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FieldProblem(BaseModel):
    field: str = Field(description="Dotted path: body.items.0.quantity, query.limit, path.id")
    problem: str


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str = Field(description="Machine-readable code: not_found, validation_failed, ...")
    message: str = Field(description="What went wrong, for people")
    fields: list[FieldProblem] = Field(
        default_factory=list, description="Each invalid field (validation errors only)"
    )
    request_id: str = Field(description="Quote it when reporting a problem: it is in the logs")


class ApiError(Exception):
    """An error answered to the client as is: status, code, message (and headers)."""

    status: int = 500
    code: str = "internal_error"
    default_message: str = "internal server error"

    def __init__(
        self, message: str | None = None, *, headers: Mapping[str, str] | None = None
    ) -> None:
        self.message = message or self.default_message
        self.headers = dict(headers or {})
        super().__init__(self.message)

    def body(self) -> ErrorBody:
        return ErrorBody(
            error=self.code, message=self.message, request_id=current_request_id() or ""
        )

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=self.body().model_dump_json(exclude_defaults=True),  # no empty `fields`
            content_type="application/json",
            headers=self.headers,
        )


class BadRequest(ApiError):
    status, code, default_message = 400, "bad_request", "the request is malformed"


class Unauthorized(ApiError):
    status, code, default_message = 401, "unauthorized", "authentication required"

    def __init__(self, message: str | None = None) -> None:
        # RFC 6750: tell the client which scheme, and why its token was refused.
        why = (message or "").replace('"', "'")
        reason = f', error="invalid_token", error_description="{why}"' if message else ""
        super().__init__(message, headers={hdrs.WWW_AUTHENTICATE: f'Bearer realm="api"{reason}'})


class Forbidden(ApiError):
    status, code, default_message = 403, "forbidden", "not allowed"


class NotFound(ApiError):
    status, code, default_message = 404, "not_found", "not found"


class MethodNotAllowed(ApiError):
    status, code, default_message = 405, "method_not_allowed", "method not allowed"

    def __init__(self, method: str, allowed: Iterable[str]) -> None:
        allowed = sorted(allowed)
        super().__init__(
            f"{method} is not allowed here; allowed: {', '.join(allowed)}",
            headers={hdrs.ALLOW: ", ".join(allowed)},
        )


class Conflict(ApiError):
    status, code, default_message = 409, "conflict", "conflicts with the current state"


class PayloadTooLarge(ApiError):
    status, code, default_message = 413, "payload_too_large", "the request body is too large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"
    default_message = "the request body must be JSON (Content-Type: application/json)"


class ValidationFailed(ApiError):
    status, code, default_message = 422, "validation_failed", "the request is invalid"

    def __init__(self, fields: Iterable[FieldProblem], message: str | None = None) -> None:
        self.fields = list(fields)
        names = ", ".join(problem.field for problem in self.fields)
        super().__init__(message or f"invalid fields: {names}")

    @classmethod
    def field(cls, field: str, problem: str) -> ValidationFailed:
        """One bad field found by the service's own checks (`body.category`, `query.page`)."""
        return cls([FieldProblem(field=field, problem=problem)])

    @classmethod
    def from_pydantic(cls, error: ValidationError, location: str) -> ValidationFailed:
        """One problem per failing field, named by its dotted path under `location`."""
        return cls(
            FieldProblem(field=".".join([location, *map(str, item["loc"])]), problem=item["msg"])
            # Never the input itself: it may be a password.
            for item in error.errors(include_url=False, include_input=False)
        )

    def body(self) -> ErrorBody:
        return super().body().model_copy(update={"fields": self.fields})


class TooManyRequests(ApiError):
    status, code, default_message = 429, "too_many_requests", "too many requests"

    def __init__(self, retry_after_s: int, message: str | None = None) -> None:
        self.retry_after_s = max(1, retry_after_s)
        super().__init__(message, headers={hdrs.RETRY_AFTER: str(self.retry_after_s)})


class ServiceUnavailable(ApiError):
    status, code, default_message = 503, "service_unavailable", "temporarily unavailable"

    def __init__(self, message: str | None = None, *, retry_after_s: int | None = None) -> None:
        headers: dict[str, str] = {}
        if retry_after_s is not None:
            headers[hdrs.RETRY_AFTER] = str(retry_after_s)
        super().__init__(message, headers=headers)


class DatabaseBusy(ServiceUnavailable):
    """No pooled database connection came free in time: the process is overloaded (or the
    database slow); the client may retry shortly."""

    code, default_message = "database_busy", "the database is busy; try again shortly"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, retry_after_s=1)


class InternalError(ApiError):
    """What every unexpected exception becomes: nothing about it reaches the client."""


def _code(reason: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_")


def from_http_exception(error: web.HTTPException) -> ApiError:
    """aiohttp's HTTP errors (router, body size, ...) as the kit's errors."""
    if isinstance(error, web.HTTPNotFound):
        return NotFound("no such resource")
    if isinstance(error, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(error.method, error.allowed_methods)
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge(error.text)
    generic = ApiError(
        error.reason,
        headers={
            str(name): value
            for name, value in error.headers.items()
            if name not in (hdrs.CONTENT_TYPE, hdrs.CONTENT_LENGTH)
        },
    )
    generic.status, generic.code = error.status, _code(error.reason)
    return generic


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()
    except web.HTTPException as error:
        if error.status < 400:  # redirects and other non-errors pass through
            raise
        return from_http_exception(error).response()
    except Exception:
        # Logged with its traceback (and the request id); the client learns nothing of it.
        log.exception("unhandled error", method=request.method, path=request.path)
        return InternalError().response()
