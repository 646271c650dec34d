"""Structured JSON logs: one line per event, each carrying the request id of its request.

The request id is the incoming `X-Request-ID` when it is one well-formed header (the gateway
sets one on every request it forwards), else a new UUID. It lives in a context variable for
the duration of the request, so every log line written meanwhile, by the kit, the service or
a library logging through the standard `logging` module, carries it.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from contextvars import ContextVar, Token
from typing import Any, TextIO

import structlog
from multidict import CIMultiDictProxy
from structlog.typing import EventDict, Processor, WrappedLogger

from services.kit.exports import REQUEST_ID_PATTERN

REQUEST_ID_HEADER = "X-Request-ID"
# The rule for a client-supplied id, the gateway's too (safe to log and to echo into JSON).
_WELL_FORMED = re.compile(REQUEST_ID_PATTERN)
_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def request_id_from(headers: CIMultiDictProxy[str]) -> str:
    """The caller's request id if it sent exactly one well-formed one, else a new one."""
    values = headers.getall(REQUEST_ID_HEADER, [])
    if len(values) == 1 and _WELL_FORMED.fullmatch(values[0]):
        return values[0]
    return str(uuid.uuid4())


def current_request_id() -> str | None:
    """The id of the request being handled, for anything that needs it (outgoing calls)."""
    return _request_id.get()


def bind_request_id(request_id: str) -> Token[str | None]:
    return _request_id.set(request_id)


def unbind_request_id(token: Token[str | None]) -> None:
    _request_id.reset(token)


def add_request_id(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """structlog processor: the current request id on every line logged during a request."""
    request_id = _request_id.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def get_logger(name: str) -> Any:
    """A structlog logger whose lines say where they come from (`"logger": name`)."""
    return structlog.get_logger(name)


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's line writer, with the name `add_logger_name` reports."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


def configure_logging(
    level: str = "info", *, service: str = "", environment: str = "", stream: TextIO | None = None
) -> None:
    """JSON lines on stdout for structlog loggers and the standard `logging` module alike.

    Idempotent: calling it again replaces the previous configuration."""
    number = logging.getLevelNamesMapping()[level.upper()]
    output = stream or sys.stdout

    def identity(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
        event.setdefault("service", service)
        event.setdefault("environment", environment)
        return event

    shared: list[Processor] = [
        structlog.stdlib.add_logger_name,
        structlog.contextvars.merge_contextvars,
        add_request_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        identity,
    ]
    render: list[Processor] = [
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(),
    ]
    structlog.configure(
        processors=[*shared, *render],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=lambda *args: _NamedWriteLogger(output, str(args[0]) if args else ""),
        # Caching saves ~1.5 us a line (of ~10) but would pin module-level loggers to the
        # first configuration, which tests (structlog.testing) need to replace.
        cache_logger_on_first_use=False,
    )
    # Libraries (asyncpg, redis, aiohttp itself) log through `logging`: same processors.
    handler = logging.StreamHandler(output)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(number)
    # The kit writes one line per request itself; aiohttp's access log would be a second one.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
