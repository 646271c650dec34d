"""The app factory: health, readiness, dependencies' lifecycle, request ids, logs, metrics,
the OpenAPI document, and a real process shutting down gracefully."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from structlog.testing import LogCapture

from services.kit import backends
from services.kit.app import DEPENDENCIES, METRICS, create_app
from services.kit.logs import add_request_id
from services.kit.metrics import Metrics
from services.kit.settings import Settings
from tests.services.kit_example import NO_REDIS, FakeDependency, api, build_app, environment

ROOT = Path(__file__).resolve().parents[2]
Client = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every structlog event, with the processors that add context (the request id)."""
    capture = LogCapture()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, add_request_id, capture]
    )
    yield capture.entries
    structlog.reset_defaults()


# --- health and readiness ------------------------------------------------------------------


async def test_healthz_answers_while_a_dependency_is_down(
    aiohttp_client: Client, tmp_path: Path
) -> None:
    client = await aiohttp_client(build_app(tmp_path, [FakeDependency("postgres", healthy=False)]))
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_is_200_when_every_dependency_is_ready(
    aiohttp_client: Client, tmp_path: Path
) -> None:
    deps = [FakeDependency("postgres"), FakeDependency("redis")]
    client = await aiohttp_client(build_app(tmp_path, deps))
    response = await client.get("/readyz")
    assert response.status == 200
    body = await response.json()
    assert body == {"status": "ready", "failing": [], "checks": {"postgres": "ok", "redis": "ok"}}


async def test_readyz_is_503_naming_the_failing_dependency_without_its_error_text(
    aiohttp_client: Client, tmp_path: Path
) -> None:
    deps = [FakeDependency("postgres", healthy=False), FakeDependency("redis")]
    client = await aiohttp_client(build_app(tmp_path, deps))
    response = await client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "unavailable"
    assert body["failing"] == ["postgres"]
    assert body["checks"] == {"postgres": "failed: ConnectionRefusedError", "redis": "ok"}
    assert "hunter2" not in await response.text()


async def test_readyz_does_not_wait_for_a_hanging_check(
    aiohttp_client: Client, tmp_path: Path
) -> None:
    deps = [FakeDependency("memcached", hangs=True), FakeDependency("redis")]
    client = await aiohttp_client(build_app(tmp_path, deps, readiness_timeout_s=0.1))
    started = time.perf_counter()
    response = await client.get("/readyz")
    assert time.perf_counter() - started < 1.0
    assert response.status == 503
    body = await response.json()
    assert body["failing"] == ["memcached"]
    assert body["checks"]["memcached"] == "timed out after 0.1 s"


async def test_dependencies_start_in_order_and_close_in_reverse(tmp_path: Path) -> None:
    events: list[str] = []
    deps = [FakeDependency(name, events) for name in ("postgres", "redis", "memcached")]
    app = build_app(tmp_path, deps)
    assert app[DEPENDENCIES] == deps
    async with TestClient(TestServer(app)) as client:
        assert events == ["start postgres", "start redis", "start memcached"]
        assert (await client.get("/healthz")).status == 200
    assert events[3:] == ["close memcached", "close redis", "close postgres"]


# --- request ids and logs ------------------------------------------------------------------


async def test_a_well_formed_request_id_is_kept_and_echoed(
    aiohttp_client: Client, tmp_path: Path
) -> None:
    client = await aiohttp_client(build_app(tmp_path))
    response = await client.get("/api/orders/404", headers={"X-Request-ID": "gw-123:abc_9.z"})
    assert response.headers["X-Request-ID"] == "gw-123:abc_9.z"
    assert (await response.json())["request_id"] == "gw-123:abc_9.z"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Request-ID": "has spaces"},
        {"X-Request-ID": "x" * 129},
        {"X-Request-ID": '"quoted"'},
    ],
)
async def test_a_missing_or_malformed_request_id_is_replaced(
    aiohttp_client: Client, tmp_path: Path, headers: dict[str, str]
) -> None:
    client = await aiohttp_client(build_app(tmp_path))
    response = await client.get("/api/orders/1", headers=headers)
    generated = response.headers["X-Request-ID"]
    assert uuid.UUID(generated).version == 4


async def test_two_request_id_headers_are_replaced(aiohttp_client: Client, tmp_path: Path) -> None:
    client = await aiohttp_client(build_app(tmp_path))
    response = await client.get(
        "/api/orders/1", headers=[("X-Request-ID", "one"), ("X-Request-ID", "two")]
    )
    assert response.headers["X-Request-ID"] not in {"one", "two"}


async def test_one_log_line_per_request_with_its_id_route_status_and_duration(
    aiohttp_client: Client, tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    client = await aiohttp_client(build_app(tmp_path))
    await client.get("/api/orders/7?secret=token", headers={"X-Request-ID": "req-1"})
    await client.get("/healthz")
    lines = [line for line in logs if line["event"] == "request"]
    assert len(lines) == 2
    first, probe = lines
    assert first["request_id"] == "req-1"
    assert first["method"] == "GET"
    assert first["route"] == "/api/orders/{order_id}"
    assert first["path"] == "/api/orders/7"  # no query string
    assert first["status"] == 200
    assert first["log_level"] == "info"
    assert isinstance(first["duration_ms"], float)
    assert probe["log_level"] == "debug"  # probes stay out of the info stream


async def test_sampled_access_log_keeps_every_error_and_counts_every_request(
    aiohttp_client: Client, tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    settings = Settings.from_env(environment(tmp_path, ACCESS_LOG_SAMPLE="0", **NO_REDIS))
    app = create_app(settings, api, (), revocations=backends.revocations(settings))
    client = await aiohttp_client(app)
    for _ in range(5):
        assert (await client.get("/api/orders/7")).status == 200
    assert (await client.get("/api/orders/x")).status == 422
    lines = [line for line in logs if line["event"] == "request"]
    assert [line["status"] for line in lines] == [422]  # successes sampled out, errors kept
    metrics = await (await client.get("/metrics")).text()
    assert 'method="GET",route="/api/orders/{order_id}",service="example",status="200"} 5.0' in (
        metrics
    )


async def test_an_unhandled_error_is_logged_with_traceback_and_request_id(
    aiohttp_client: Client, tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    client = await aiohttp_client(build_app(tmp_path))
    response = await client.get("/api/boom", headers={"X-Request-ID": "req-boom"})
    assert response.status == 500
    (error,) = [line for line in logs if line["event"] == "unhandled error"]
    assert error["request_id"] == "req-boom"
    assert error["exc_info"] is True and error["log_level"] == "error"


def test_configured_logging_writes_json_lines_with_the_request_id() -> None:
    """In a process of its own: logging configuration is process-wide."""
    script = textwrap.dedent(
        """
        import logging, structlog
        from services.kit.logs import bind_request_id, configure_logging, get_logger
        configure_logging("info", service="example", environment="test")
        bind_request_id("req-42")
        log = get_logger("services.example")
        log.info("hello", answer=42)
        log.debug("hidden")
        logging.getLogger("asyncpg").warning("from the standard library")
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("failed")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["event"] for line in lines] == ["hello", "from the standard library", "failed"]
    hello, stdlib, failed = lines
    assert hello["answer"] == 42 and hello["level"] == "info"
    assert hello["logger"] == "services.example"
    assert hello["timestamp"].endswith("Z")
    assert {line["request_id"] for line in lines} == {"req-42"}
    assert {line["service"] for line in lines} == {"example"}
    assert stdlib["logger"] == "asyncpg" and stdlib["level"] == "warning"
    assert "ZeroDivisionError" in failed["exception"]


# --- metrics -------------------------------------------------------------------------------


async def test_requests_are_counted_by_route_template_and_status(
    aiohttp_client: Client, tmp_path: Path
) -> None:
    app = build_app(tmp_path)
    client = await aiohttp_client(app)
    for path in ("/api/orders/1", "/api/orders/2", "/api/orders/404", "/nowhere", "/healthz"):
        await client.get(path)
    await client.put("/api/orders/1")

    def count(route: str, status: str, method: str = "GET") -> float | None:
        labels = {"service": "example", "route": route, "method": method, "status": status}
        return app[METRICS].registry.get_sample_value("http_requests_total", labels)

    assert count("/api/orders/{order_id}", "200") == 2
    assert count("/api/orders/{order_id}", "404") == 1
    assert count("unmatched", "404") == 1
    assert count("unmatched", "405", "PUT") == 1
    assert count("/healthz", "200") is None  # probes are not traffic
    latency = app[METRICS].registry.get_sample_value(
        "http_request_duration_seconds_count",
        {"service": "example", "route": "/api/orders/{order_id}"},
    )
    assert latency == 3


async def test_metrics_endpoint_serves_the_apps_own_registry(
    aiohttp_client: Client, tmp_path: Path
) -> None:
    app = build_app(tmp_path)
    metrics = app[METRICS]
    # What the database and cache code record into.
    metrics.cache_requests.labels(service="example", layer="l1", result="hit").inc(3)
    metrics.db_query_seconds.labels(service="example", kind="read").observe(0.002)
    metrics.db_pool_connections.labels(service="example", pool="replica", state="idle").set(4)
    client = await aiohttp_client(app)
    await client.get("/api/orders/5")
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    assert 'cache_requests_total{layer="l1",result="hit",service="example"} 3.0' in text
    assert 'db_query_duration_seconds_bucket{kind="read",le="0.0025",service="example"} 1.0' in text
    assert 'db_pool_connections{pool="replica",service="example",state="idle"} 4.0' in text
    assert (
        'http_requests_total{method="GET",route="/api/orders/{order_id}",'
        'service="example",status="200"} 1.0'
    ) in text
    assert 'http_request_duration_seconds_bucket{le="5.0",route=' in text  # the alert's bound


def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    first, second = build_app(tmp_path), build_app(tmp_path)
    assert first[METRICS].registry is not second[METRICS].registry


def test_metric_names_are_the_alerts(tmp_path: Path) -> None:
    from services.kit.exports import CACHE_REQUESTS, HTTP_LATENCY, HTTP_REQUESTS

    names = {metric.name for metric in Metrics("x", process=False).registry.collect()}
    # prometheus-client reports counters without their _total suffix.
    assert HTTP_REQUESTS.removesuffix("_total") in names
    assert CACHE_REQUESTS.removesuffix("_total") in names
    assert HTTP_LATENCY in names


# --- the OpenAPI document ------------------------------------------------------------------


async def test_openapi_document_is_valid_and_describes_every_route(
    aiohttp_client: Client, tmp_path: Path
) -> None:
    client = await aiohttp_client(build_app(tmp_path))
    response = await client.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    validate(document, cls=OpenAPIV31SpecValidator)
    assert document["openapi"] == "3.1.0"
    assert document["info"] == {
        "title": "example",
        "version": "0.1.0",
        "description": "The kit's test service",
    }
    schemas = document["components"]["schemas"]
    assert {"NewOrder", "Order", "Item", "ErrorBody", "FieldProblem"} <= set(schemas)
    assert set(document["paths"]) == {
        "/api/orders",
        "/api/orders/{order_id}",
        "/api/me",
        "/api/register",
        "/api/boom",
        "/api/bad-answer",
        "/api/busy",
        "/api/slow",
    }
    place = document["paths"]["/api/orders"]["post"]
    assert place["operationId"] == "place_order"
    assert place["summary"] == "Place an order."
    assert place["description"] == "Quantities add up into total_quantity."
    assert place["tags"] == ["orders"]
    body = place["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/NewOrder"}
    created = place["responses"]["201"]["content"]["application/json"]["schema"]
    assert created == {"$ref": "#/components/schemas/Order"}
    assert set(place["responses"]) == {"201", "400", "413", "415", "422", "500"}
    error = place["responses"]["422"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorBody"}
    # Nested models are referenced, not inlined, and every reference resolves.
    assert schemas["NewOrder"]["properties"]["items"]["items"] == {
        "$ref": "#/components/schemas/Item"
    }
    refs = _refs(document)
    assert refs and all(ref.removeprefix("#/components/schemas/") in schemas for ref in refs)


async def test_openapi_parameters_security_and_errors(
    aiohttp_client: Client, tmp_path: Path
) -> None:
    client = await aiohttp_client(build_app(tmp_path))
    document = await (await client.get("/openapi.json")).json()
    listing = document["paths"]["/api/orders"]["get"]
    limit, sku = listing["parameters"]
    assert limit["name"] == "limit" and limit["in"] == "query" and limit["required"] is False
    assert limit["schema"]["maximum"] == 50
    assert limit["description"] == "At most this many orders"
    assert sku["schema"]["type"] == "array"
    assert listing["responses"]["200"]["content"]["application/json"]["schema"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Order"},
    }
    cancel = document["paths"]["/api/orders/{order_id}"]["delete"]
    assert cancel["parameters"] == [
        {
            "name": "order_id",
            "in": "path",
            "required": True,
            "schema": {"exclusiveMinimum": 0, "title": "Order Id", "type": "integer"},
        }
    ]
    assert cancel["security"] == [{"bearer": []}]
    assert set(cancel["responses"]) == {"204", "401", "403", "409", "422", "500"}
    assert "content" not in cancel["responses"]["204"]
    assert document["paths"]["/api/me"]["get"]["security"] == [{"bearer": []}]
    assert "403" not in document["paths"]["/api/me"]["get"]["responses"]  # any user
    assert "security" not in document["paths"]["/api/orders/{order_id}"]["get"]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_routes_needing_a_user_refuse_to_start_without_a_jwt_secret(tmp_path: Path) -> None:
    env = environment(tmp_path)
    del env["JWT_SECRET_FILE"]
    with pytest.raises(RuntimeError, match="need a JWT secret"):
        create_app(Settings.from_env(env), api)


def test_routes_needing_a_user_refuse_to_start_without_revocations(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="need the revocations"):
        create_app(Settings.from_env(environment(tmp_path)), api)


# --- a real process: graceful shutdown -----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_sigterm_drains_in_flight_requests_then_closes_dependencies(
    tmp_path: Path,
) -> None:
    """As `python -m services.<name>` runs it: a request in flight when SIGTERM arrives is
    answered; readiness fails during the drain; the dependencies close last."""
    port = _free_port()
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from services.kit.app import run
        from services.kit.settings import Settings
        from tests.services.kit_example import FakeDependency, build_app

        settings = Settings.load()
        app = build_app(Path(sys.argv[1]), [FakeDependency("postgres")])
        run(app, settings, host="127.0.0.1", drain_s=1.0)
        """
    )
    env = {**os.environ, **environment(tmp_path), "PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30  # a cold start imports (and compiles) the kit
            while True:
                try:
                    async with session.get(f"{base}/readyz") as ready:
                        if ready.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert process.poll() is None, "the service exited before it was ready"
                assert time.monotonic() < deadline, "the service was not ready within 30 s"
                await asyncio.sleep(0.05)
            in_flight = asyncio.create_task(session.get(f"{base}/api/slow?s=1.5"))
            await asyncio.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            async with session.get(f"{base}/readyz") as draining:
                assert draining.status == 503
                assert (await draining.json())["status"] == "draining"
            async with await in_flight as answered:
                assert answered.status == 204
        stdout, _ = process.communicate(timeout=15)
    finally:
        process.kill()
    assert process.returncode == 0
    events = [json.loads(line)["event"] for line in stdout.splitlines()]
    assert events.index("stopping") < events.index("dependency closed") < events.index("stopped")
