"""The application every service is: routes, dependencies, health, metrics, and how it runs.

    api = Api("product", version="1.0.0")          # routes declared in the service's views

    def init_app(settings: ProductSettings) -> web.Application:
        metrics = Metrics(settings.service_name)
        database = Database(settings.database(), settings.service_name, metrics)
        app = create_app(settings, api, [database, cache], metrics=metrics)
        app[DATABASE] = database                    # the service's own typed AppKey
        return app

    # services/product/__main__.py
    main(init_app, ProductSettings)

Every app answers `/healthz` (alive: 200 while the process serves), `/readyz` (200 when every
dependency's check passes within READINESS_TIMEOUT_S, else 503 naming the failing ones),
`/metrics` (Prometheus) and `/openapi.json`, and wraps every request in two middlewares: the
outer one gives it a request id, logs it and counts it; the inner one turns every error into
the JSON error body (`services.kit.errors`).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import uvloop
from aiohttp import web
from aiohttp.typedefs import Middleware

from services.kit import streams
from services.kit.api import Api
from services.kit.auth import REVOCATIONS, TOKENS, Tokens
from services.kit.errors import Handler, error_middleware
from services.kit.logs import (
    REQUEST_ID_HEADER,
    bind_request_id,
    configure_logging,
    get_logger,
    request_id_from,
    unbind_request_id,
)
from services.kit.metrics import CONTENT_TYPE, Metrics
from services.kit.revocation import Revocations
from services.kit.settings import Settings

__all__ = [
    "API",
    "DEPENDENCIES",
    "LIFECYCLE",
    "METRICS",
    "REQUEST_ID",
    "REVOCATIONS",
    "SETTINGS",
    "TOKENS",
    "Dependency",
    "add_dependency",
    "create_app",
    "main",
    "run",
    "serve",
]

log = get_logger(__name__)

CLIENT_MAX_SIZE = 1024 * 1024  # request bodies above 1 MiB: 413
READINESS_TIMEOUT_S = 0.8  # the kubelet gives /readyz 1 s (the probe's default timeoutSeconds)
DRAIN_S = 5.0  # after SIGTERM on Kubernetes: serve, unready, while endpoints catch up
# Kubernetes kills a pod 30 s after SIGTERM (terminationGracePeriodSeconds): drain 5 s, then
# in-flight requests get 15 s (the gateway gives up on a request after 5 s anyway), then the
# background jobs and dependencies 8 s in all, each dependency at most 3 s (a pool closes in
# milliseconds when nothing hangs): 28 s, whatever hangs.
SHUTDOWN_TIMEOUT_S = 15.0
CLEANUP_TIMEOUT_S = 8.0
CLOSE_TIMEOUT_S = 3.0
# Connections waiting to be accepted. The gateway opens many at once under a burst; with
# aiohttp's default of 128 a busy event loop let the queue overflow and HAProxy answered 503.
LISTEN_BACKLOG = 1024
SLOW_REQUEST_MS = 500.0  # always in the access log, whatever its sample rate
OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
UNMATCHED = "unmatched"  # the route label of requests no route matched (404, 405)


class Dependency(Protocol):
    """Something the service needs (database, cache, ...): started before the app serves,
    closed after it stops, and checked by /readyz."""

    name: str

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def check(self) -> None:
        """Raise if the dependency cannot serve right now."""
        ...


@dataclass
class Lifecycle:
    readiness_timeout_s: float = READINESS_TIMEOUT_S
    draining: bool = False


SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
API = web.AppKey("api", Api)
DEPENDENCIES: web.AppKey[list[Dependency]] = web.AppKey("dependencies")
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
OPENAPI = web.AppKey("openapi", bytes)
REQUEST_ID = web.RequestKey("request_id", str)


def create_app(
    settings: Settings,
    api: Api,
    dependencies: Iterable[Dependency] = (),
    *,
    metrics: Metrics | None = None,
    tokens: Tokens | None = None,
    revocations: Revocations | None = None,
    middlewares: Iterable[Middleware] = (),
    client_max_size: int = CLIENT_MAX_SIZE,
    readiness_timeout_s: float = READINESS_TIMEOUT_S,
) -> web.Application:
    """The service's app: `api`'s routes, the ops endpoints, the dependencies' lifecycle.

    `tokens` defaults to a verifier with the secret of JWT_SECRET_FILE, when it is set.
    `revocations` is required when a route needs a user (`services.kit.backends.revocations`):
    every authenticated request checks its token against them."""
    app = web.Application(
        middlewares=[observe_middleware, error_middleware, *middlewares],
        client_max_size=client_max_size,
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics or Metrics(settings.service_name)
    app[API] = api
    app[LIFECYCLE] = Lifecycle(readiness_timeout_s=readiness_timeout_s)
    streams.install(app)  # open event streams end when the app shuts down
    app[DEPENDENCIES] = []
    if tokens is None and settings.jwt_secret_file is not None:
        tokens = Tokens.from_file(settings.jwt_secret_file)
    if tokens is not None:
        app[TOKENS] = tokens
    if revocations is not None:
        app[REVOCATIONS] = revocations
    # Made once, at start: a model that cannot be described fails the start, not a request.
    app[OPENAPI] = json.dumps(api.openapi()).encode()
    app.on_response_prepare.append(_echo_request_id)
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.router.add_get("/metrics", metrics_endpoint, name="metrics")
    app.router.add_get("/openapi.json", openapi, name="openapi")
    api.add_to(app)
    for dependency in dependencies:
        add_dependency(app, dependency)
    if revocations is not None:  # not a readiness dependency: public routes serve without it
        app.on_startup.append(lambda _app: revocations.warm_up())
        app.on_cleanup.append(lambda _app: revocations.close())
    return app


def add_dependency(app: web.Application, dependency: Dependency) -> None:
    """Start `dependency` with the app (in the order added), close it in reverse order."""

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        started = time.perf_counter()
        await dependency.start()
        log.info("dependency started", dependency=dependency.name, duration_ms=_ms(started))
        yield
        try:
            await asyncio.wait_for(dependency.close(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.error("dependency did not close in time", dependency=dependency.name)
        else:
            log.info("dependency closed", dependency=dependency.name)

    app[DEPENDENCIES].append(dependency)
    app.cleanup_ctx.append(lifecycle)


# --- the ops endpoints ---------------------------------------------------------------------


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    lifecycle = request.app[LIFECYCLE]
    if lifecycle.draining:
        return web.json_response({"status": "draining", "failing": [], "checks": {}}, status=503)
    dependencies = request.app[DEPENDENCIES]
    problems = await asyncio.gather(
        *(_check(dependency, lifecycle.readiness_timeout_s) for dependency in dependencies)
    )
    checks = {d.name: problem or "ok" for d, problem in zip(dependencies, problems, strict=True)}
    failing = [d.name for d, problem in zip(dependencies, problems, strict=True) if problem]
    return web.json_response(
        {"status": "unavailable" if failing else "ready", "failing": failing, "checks": checks},
        status=503 if failing else 200,
    )


async def _check(dependency: Dependency, timeout_s: float) -> str | None:
    """None when `dependency` is ready, else why not (its exception's type, never its text)."""
    try:
        async with asyncio.timeout(timeout_s):
            await dependency.check()
    except TimeoutError:
        log.warning("readiness check timed out", dependency=dependency.name, timeout_s=timeout_s)
        return f"timed out after {timeout_s} s"
    except Exception as error:
        log.warning("readiness check failed", dependency=dependency.name, exc_info=True)
        return f"failed: {type(error).__name__}"
    return None


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


# --- every request: id, log line, metrics --------------------------------------------------


def route_template(request: web.Request) -> str:
    """The matched route's template (`/api/products/{sku}`), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request_id_from(request.headers)
    request[REQUEST_ID] = request_id
    token = bind_request_id(request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:  # non-error answers (redirects) raised as exceptions
        status = error.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away before the answer
        raise
    finally:
        seconds = time.perf_counter() - started
        route = route_template(request)
        fields = {
            "method": request.method,
            "route": route,
            "path": request.path,  # never the query string: it may carry tokens
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
        }
        if route in OPS_PATHS:  # probes and scrapes: neither counted nor logged at info
            log.debug("request", **fields)
        else:
            request.config_dict[METRICS].observe_request(route, request.method, status, seconds)
            if (
                status >= 400
                or seconds * 1000 >= SLOW_REQUEST_MS
                or random.random() < request.config_dict[SETTINGS].access_log_sample
            ):
                log.info("request", **fields)
        unbind_request_id(token)


async def _echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every response carries the request's id, whoever made it (handler, error, stream)."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


# --- running it ---------------------------------------------------------------------------

S = TypeVar("S", bound=Settings)


async def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    drain_s: float = 0.0,
    shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully.

    On SIGTERM, /readyz answers 503 for `drain_s` while the app keeps serving (Kubernetes
    takes a terminating pod out of its endpoints asynchronously); then the listener closes,
    in-flight requests get up to `shutdown_timeout_s`, and the dependencies close in reverse
    order, within CLEANUP_TIMEOUT_S in all. SIGINT (Ctrl-C) skips the drain."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[signal.Signals] = loop.create_future()

    def on_signal(received: signal.Signals) -> None:
        if not stop.done():
            stop.set_result(received)

    for received in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(received, on_signal, received)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout_s)
    try:
        await runner.setup()  # the dependencies start here
        await web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG).start()
        log.info("serving", host=host, port=port)
        received = await stop
        log.info("stopping", signal=received.name)
        if received is signal.SIGTERM and drain_s > 0:
            app[LIFECYCLE].draining = True
            await asyncio.sleep(drain_s)
    finally:
        try:
            await asyncio.wait_for(runner.cleanup(), shutdown_timeout_s + CLEANUP_TIMEOUT_S)
        except TimeoutError:
            log.error(
                "shutdown took too long: exiting without closing what is left",
                waited_s=shutdown_timeout_s + CLEANUP_TIMEOUT_S,
            )
        for received in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(received)
        log.info("stopped")


def run(
    app: web.Application,
    settings: Settings,
    *,
    host: str = "0.0.0.0",
    drain_s: float | None = None,
    shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
) -> None:
    """Serve `app` on settings.port with JSON logs until stopped (see `serve`).

    The drain after SIGTERM defaults to DRAIN_S on Kubernetes, none elsewhere."""
    configure_logging(
        settings.log_level, service=settings.service_name, environment=settings.environment
    )
    if drain_s is None:
        drain_s = DRAIN_S if "KUBERNETES_SERVICE_HOST" in os.environ else 0.0
    try:
        # uvloop: the same asyncio API on libuv, about twice the requests per core here.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(
                serve(
                    app,
                    host=host,
                    port=settings.port,
                    drain_s=drain_s,
                    shutdown_timeout_s=shutdown_timeout_s,
                )
            )
    except Exception:
        log.exception("service failed")
        raise SystemExit(1) from None


def main(build: Callable[[S], web.Application], settings_type: type[S]) -> None:
    """`python -m services.<name>`: settings from the environment, build the app, run it."""
    settings = settings_type.load()  # a bad environment: one message, exit status 2
    configure_logging(
        settings.log_level, service=settings.service_name, environment=settings.environment
    )
    run(build(settings), settings)
