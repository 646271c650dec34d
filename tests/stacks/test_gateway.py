"""The local gateway, for real: HAProxy runs the config rendered from the service table in
front of one recording upstream, and clients see what the module docstring of
components/conf/haproxy.py promises (routing, JWT checks, request ids, limits)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp import web

from services.kit.auth import Tokens
from stacks.gateway import SERVER_MAXCONN, gateway_environment, kubernetes_config, local_config
from stacks.local.ports import PortAllocator
from stacks.services import SERVICE_TABLE

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")

KEY = "k3y" * 22  # 66 bytes, like the platform's generated keys


@dataclass
class Upstream:
    """Every routed service, played by one server that records what reached it."""

    seen: list[web.Request] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        if request.path != "/readyz":
            self.seen.append(request)
        return web.json_response({"path": request.path})


@dataclass
class Gateway:
    url: str
    upstream: Upstream
    tokens: Tokens


@pytest.fixture(scope="module")
def ports() -> Iterator[tuple[int, int, int]]:
    free = PortAllocator(None)
    yield free.take("upstream"), free.take("gateway"), free.take("metrics")


@pytest.fixture
async def gateway(ports: tuple[int, int, int], tmp_path: Path) -> AsyncIterator[Gateway]:
    upstream_port, port, metrics_port = ports
    upstream = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", upstream_port).start()

    servers = {s.name: [("127.0.0.1", upstream_port)] for s in SERVICE_TABLE if s.route}
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(local_config(servers, port=port, metrics_port=metrics_port))
    key_file = tmp_path / "jwt-secret"
    key_file.write_text(KEY + "\n")
    env = {**os.environ, **gateway_environment(key_file)}
    proc = subprocess.Popen(
        ["haproxy", "-db", "-f", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # the gateway and its first health checks: well under 5 s
                try:
                    async with session.get(f"{url}/api/products") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the gateway did not start routing")
        upstream.seen.clear()
        yield Gateway(url, upstream, Tokens(KEY.encode()))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        await runner.cleanup()


async def call(
    gateway: Gateway, path: str, token: str | None = None, **kwargs: object
) -> tuple[int, dict[str, str], dict[str, object]]:
    headers = dict(kwargs.pop("headers", {}))  # type: ignore[call-overload]
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as session:
        method = str(kwargs.pop("method", "GET"))
        async with session.request(method, gateway.url + path, headers=headers, **kwargs) as r:
            return r.status, dict(r.headers), await r.json(content_type=None)


async def test_routes_by_the_table_and_sets_request_ids(gateway: Gateway) -> None:
    status, headers, body = await call(gateway, "/api/products/42?x=1")
    assert status == 200 and body == {"path": "/api/products/42"}
    seen = gateway.upstream.seen[-1]
    assert headers["X-Request-ID"] == seen.headers["X-Request-ID"]
    status, headers, _ = await call(gateway, "/api/users", headers={"X-Request-ID": "abc-1"})
    assert status == 200 and headers["X-Request-ID"] == "abc-1"
    # Not a route: a JSON 404 from the gateway, nothing forwarded.
    before = len(gateway.upstream.seen)
    status, headers, body = await call(gateway, "/api/productsx")
    assert status == 404 and body["error"] == "not_found"
    assert body["request_id"] == headers["X-Request-ID"]
    assert len(gateway.upstream.seen) == before


async def test_a_valid_access_token_opens_an_authenticated_route(gateway: Gateway) -> None:
    token = gateway.tokens.issue("user-1", "customer", "session-1")
    status, _, body = await call(gateway, "/api/orders", token)
    assert status == 200 and body == {"path": "/api/orders"}
    assert gateway.upstream.seen[-1].headers["Authorization"] == f"Bearer {token}"


def bad_tokens(tokens: Tokens) -> dict[str, str]:
    claims = {"sub": "u", "role": "admin", "sid": "s", "type": "access", "exp": 2_000_000_000}
    return {
        "signed with another key": Tokens(b"x" * 64).issue("user-1", "admin", "s"),
        "expired": tokens.issue("user-1", "customer", "s", ttl=timedelta(seconds=-1)),
        "a refresh token": tokens.issue("user-1", "customer", "s", token_type="refresh"),
        "alg none": jwt.encode(claims, None, algorithm="none"),
        "HS512 with the right key": jwt.encode(claims, KEY, algorithm="HS512"),
        "not a JWT": "not.a.jwt",
    }


async def test_every_bad_token_is_refused_before_the_service(gateway: Gateway) -> None:
    status, headers, body = await call(gateway, "/api/orders/123")
    assert status == 401 and body["reason"] == "missing_token"
    assert headers["WWW-Authenticate"] == "Bearer"
    for problem, token in bad_tokens(gateway.tokens).items():
        status, _, body = await call(gateway, "/api/orders/123", token)
        assert (status, body.get("reason")) == (401, "invalid_token"), problem
    assert gateway.upstream.seen == []
    # Routes without auth=True pass whatever token they carry: the service decides.
    status, _, _ = await call(gateway, "/api/products", "not.a.jwt")
    assert status == 200


async def test_body_limits_and_rate_limit(gateway: Gateway) -> None:
    status, _, body = await call(
        gateway, "/api/users", method="POST", data=b"x" * (1024 * 1024 + 1)
    )
    assert status == 413 and body["error"] == "payload_too_large"
    assert gateway.upstream.seen == []
    # 500 requests per 10 s per client (RateLimit's default), then 429 with Retry-After.
    async with aiohttp.ClientSession() as session:

        async def one(_: int) -> tuple[int, str | None]:
            async with session.get(gateway.url + "/api/products") as r:
                return r.status, r.headers.get("Retry-After")

        answers = await asyncio.gather(*(one(i) for i in range(540)))
    limited = [retry for status, retry in answers if status == 429]
    passed = sum(status == 200 for status, _ in answers)
    # The fixture's readiness probes and the 413 above count too.
    assert 490 <= passed < 500 and passed + len(limited) == 540
    assert set(limited) == {"10"}


def test_every_service_pod_takes_a_bounded_number_of_requests() -> None:
    """On GKE as locally, the gateway caps requests in flight per service pod (the rest queue
    at the gateway, bounded by `timeout queue`), so a burst cannot bury one event loop."""
    _, files = kubernetes_config()
    (cfg,) = files.values()
    assert f"    default-server inter 2s fall 3 rise 2 maxconn {SERVER_MAXCONN}" in cfg.splitlines()
    assert "    timeout queue " in cfg
