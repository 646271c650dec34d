"""What the shipped stand-ins for outside parties share (the payment providers, the warehouse):
an API key, idempotent replays, a request log, and failures on demand for drills.

A subclass names its operations (`operations()`: path -> handler of the parsed body, the
path's match and the idempotency key) and the party's shapes (`read_body`, `error`). Every
operation is a POST; a request repeated with the same idempotency key is answered with the
first answer (marked `Idempotent-Replayed: true`) and changes nothing; the same key with a
different body is an error (`reused_key_status`). Server errors are not remembered, so a retry
after one is processed afresh. A call whose key is still being processed by an earlier call
answers 409 (`idempotency_key_in_use`), as Stripe does; a call finishes even when its caller
hangs up, as a real party's does.

The admin endpoints, for tests and failure drills:

    POST /_sim/behaviour   {"mode": "ok"|"fail"|"slow"|"timeout"|"flaky"|"lost",
                            "delay_ms": 0, "failure_rate": 0.0, "fail_next": 0, "seed": null}
                           (each POST replaces the whole behaviour)
    GET  /_sim/behaviour
    GET  /_sim/requests    every call received: method, path, idempotency key, status
    POST /_sim/reset       forget everything, behave normally

Modes (before processing unless said): `fail` answers 500; `slow` waits `delay_ms` then
processes; `timeout` hangs (until the behaviour changes or the simulator stops) and then
answers 504 without processing; `flaky` answers 503 to a `failure_rate` share of calls;
`lost` processes the call and then answers 502, as when a response is lost on the way back
(a retry with the same key then gets the original result). `fail_next: n` makes the next n
calls answer 503, whatever the mode. `delay_ms` also delays every mode but `timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from aiohttp import hdrs, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.kit.tasks import finish_even_if_cancelled

HANG_S = 300.0  # a `timeout` call hangs this long at most
REQUEST_LOG = 10_000  # the last calls /_sim/requests lists

Json = dict[str, Any]
Answer = tuple[int, Json]
Operation = Callable[[Json, Mapping[str, str], str | None], Answer]


class Behaviour(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["ok", "fail", "slow", "timeout", "flaky", "lost"] = "ok"
    delay_ms: int = Field(default=0, ge=0, le=600_000)
    failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    fail_next: int = Field(default=0, ge=0)
    seed: int | None = None


@dataclass
class Stored:
    fingerprint: str
    status: int
    body: Json


class BadBody(Exception):
    pass


class Simulator:
    """An outside party's stand-in: see the module's docstring."""

    key_header: ClassVar[str] = "Idempotency-Key"
    behaviour_model: ClassVar[type[Behaviour]] = Behaviour
    reused_key_status: ClassVar[int] = 400  # the same key with another body

    def __init__(self, *, api_key: str, seed: int | None = None) -> None:
        self.api_key = api_key
        self.behaviour = self.behaviour_model(seed=seed)
        self.rng = random.Random(seed)
        self.idempotency: dict[tuple[str, str], Stored] = {}
        self.in_flight: set[tuple[str, str]] = set()  # (key, scope) being processed now
        self.requests: deque[Json] = deque(maxlen=REQUEST_LOG)
        self._release: asyncio.Event | None = None

    # --- the app ----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/_sim/behaviour", self.set_behaviour)
        app.router.add_get("/_sim/behaviour", self.get_behaviour)
        app.router.add_get("/_sim/requests", self.list_requests)
        app.router.add_post("/_sim/reset", self.reset)
        for path, operation in self.operations().items():
            app.router.add_post(path, self._endpoint(operation))
        app.on_shutdown.append(self._on_shutdown)
        return app

    def operations(self) -> Mapping[str, Operation]:
        raise NotImplementedError

    # --- the party's shapes -----------------------------------------------------------------

    async def read_body(self, request: web.Request) -> Json:
        """The request's body as a dict (JSON by default); `BadBody` when it is not one."""
        raw = await request.read()
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise BadBody("the body is not JSON") from None
        if not isinstance(body, dict):
            raise BadBody("the body is not a JSON object")
        return body

    def error(self, status: int, code: str, message: str, **extra: Any) -> Answer:
        return status, {"error": {"code": code, "message": message, **extra}}

    def idempotency_scope(self, path: str) -> str:
        return ""  # keys are global to the account

    def authenticate(self, request: web.Request) -> Answer | None:
        """None when the call may proceed, else the answer refusing it."""
        if request.headers.get(hdrs.AUTHORIZATION) != f"Bearer {self.api_key}":
            return self.error(401, "unauthorized", "invalid API key")
        return None

    def screen(self, body: Json) -> Answer | None:
        """A refusal of the body before anything else looks at it (None: go on)."""
        return None

    # --- admin ------------------------------------------------------------------------------

    async def set_behaviour(self, request: web.Request) -> web.Response:
        try:
            behaviour = self.behaviour_model.model_validate(await request.json())
        except (ValidationError, ValueError) as error:
            return web.json_response({"error": str(error)}, status=400)
        self.behaviour = behaviour
        if behaviour.seed is not None:
            self.rng = random.Random(behaviour.seed)
        self._wake_hung()
        return web.json_response(self.behaviour.model_dump())

    async def get_behaviour(self, _request: web.Request) -> web.Response:
        return web.json_response(self.behaviour.model_dump())

    async def list_requests(self, _request: web.Request) -> web.Response:
        return web.json_response({"requests": list(self.requests)})

    async def reset(self, _request: web.Request) -> web.Response:
        self.behaviour = self.behaviour_model()
        self.idempotency.clear()
        self.requests.clear()
        self._wake_hung()
        return web.json_response({"status": "reset"})

    def _wake_hung(self) -> None:
        if self._release is not None:
            self._release.set()
        self._release = None

    async def _on_shutdown(self, _app: web.Application) -> None:
        self._wake_hung()

    # --- every call -------------------------------------------------------------------------

    def _endpoint(self, operation: Operation) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            entry: Json = {
                "method": request.method,
                "path": request.path,
                "idempotency_key": request.headers.get(self.key_header),
            }
            self.requests.append(entry)
            # A real party finishes what it started when the caller hangs up (a client
            # timeout): that is how calls get stranded, and what callers must handle.
            status, body, headers = await finish_even_if_cancelled(self._serve(request, operation))
            entry["status"] = status
            return web.json_response(body, status=status, headers=headers)

        return handler

    async def _serve(
        self, request: web.Request, operation: Operation
    ) -> tuple[int, Json, dict[str, str]]:
        if (refusal := self.authenticate(request)) is not None:
            return (*refusal, {})
        try:
            body = await self.read_body(request)
        except BadBody as error:
            return (*self.error(400, "invalid_request", str(error)), {})
        if (refusal := self.screen(body)) is not None:
            return (*refusal, {})
        key = request.headers.get(self.key_header)
        slot = (key, self.idempotency_scope(request.path)) if key else None
        if slot is not None and slot in self.in_flight:
            # A retry that overtakes the first request with its key (the caller timed out
            # while this one is still being processed) must not act twice.
            return (
                *self.error(
                    409, "idempotency_key_in_use", "a request with this key is in progress"
                ),
                {},
            )
        if slot is not None:
            self.in_flight.add(slot)
        try:
            return await self._act(request, operation, body, key, slot)
        finally:
            if slot is not None:
                self.in_flight.discard(slot)

    async def _act(
        self,
        request: web.Request,
        operation: Operation,
        body: Json,
        key: str | None,
        slot: tuple[str, str] | None,
    ) -> tuple[int, Json, dict[str, str]]:
        failure = await self.misbehave()
        if failure is not None:
            return (*failure, {})
        fingerprint = hashlib.sha256(
            json.dumps([request.path, body], sort_keys=True).encode()
        ).hexdigest()
        if slot is not None and (stored := self.idempotency.get(slot)) is not None:
            if stored.fingerprint != fingerprint:
                return (
                    *self.error(
                        self.reused_key_status,
                        "idempotency_key_reused",
                        "this idempotency key was used with a different request",
                    ),
                    {},
                )
            return stored.status, stored.body, {"Idempotent-Replayed": "true"}
        # No await between here and the store below: concurrent repeats cannot both process.
        status, answer = operation(body, request.match_info, key)
        if slot is not None and status < 500:
            self.idempotency[slot] = Stored(fingerprint, status, answer)
        if self.behaviour.mode == "lost":
            return (*self.error(502, "bad_gateway", "upstream answer lost"), {})
        return status, answer, {}

    async def misbehave(self) -> Answer | None:
        """The failure the behaviour asks for on this call, or None to process it."""
        behaviour = self.behaviour
        if behaviour.mode == "timeout":
            if self._release is None:
                self._release = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), HANG_S)
            return self.error(504, "timeout", "the request timed out")
        if behaviour.delay_ms:
            await asyncio.sleep(behaviour.delay_ms / 1000)
        if behaviour.fail_next > 0:
            self.behaviour = behaviour.model_copy(update={"fail_next": behaviour.fail_next - 1})
            return self.error(503, "unavailable", "temporarily unavailable")
        if behaviour.mode == "fail":
            return self.error(500, "internal", "an error occurred on the other side")
        if behaviour.mode == "flaky" and self.rng.random() < behaviour.failure_rate:
            return self.error(503, "unavailable", "temporarily unavailable")
        return None
