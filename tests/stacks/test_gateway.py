"""The local gateway, for real: HAProxy runs the config rendered from the service table in
front of one recording upstream, and clients see what the module docstring of
components/conf/haproxy.py promises (routing, JWT checks, request ids, limits, the client
address services see, response headers, JSON errors). Attacks that need exact bytes (forged
headers repeated, malformed requests) go through a raw socket."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp import web
from multidict import CIMultiDict

from components.conf.haproxy import (
    GatewayTimeouts,
    RateLimit,
    Route,
    StaticServers,
    Streams,
    haproxy_cfg,
)
from services.kit.auth import Tokens
from services.kit.streams import KEEPALIVE_S
from stacks.gateway import (
    JWT_KEY_ENV,
    SERVER_MAXCONN,
    gateway_environment,
    kubernetes_config,
    local_config,
)
from stacks.gateway import STREAMS as GATEWAY_STREAMS
from stacks.local.ports import PortAllocator
from stacks.services import SERVICE_TABLE

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")

KEY = "k3y" * 22  # 66 bytes, like the platform's generated keys


@dataclass
class Upstream:
    """Every routed service, played by one aiohttp server that records what reached it (and
    sends aiohttp's ``Server`` banner, as the services do)."""

    port: int
    seen: list[web.Request] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        if request.path != "/readyz":
            self.seen.append(request)
        response = web.json_response({"path": request.path})
        # A service that chooses its own caching (as the catalog may).
        if "cache_control" in request.query:
            response.headers["Cache-Control"] = request.query["cache_control"]
        return response


@dataclass
class Gateway:
    url: str
    port: int
    upstream: Upstream
    tokens: Tokens


@pytest.fixture(scope="module")
def ports() -> Iterator[dict[str, int]]:
    free = PortAllocator(None)
    names = ("upstream", "gateway", "metrics", "edge", "edge-metrics", "nothing-listens")
    yield {name: free.take(name) for name in names}


@pytest.fixture
async def upstream(ports: dict[str, int]) -> AsyncIterator[Upstream]:
    upstream = Upstream(ports["upstream"])
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", upstream.port).start()
    try:
        yield upstream
    finally:
        await runner.cleanup()


@asynccontextmanager
async def running_haproxy(cfg: str, directory: Path, url: str) -> AsyncIterator[None]:
    """HAProxy on ``cfg`` until ``url`` answers 200."""
    path = directory / "haproxy.cfg"
    path.write_text(cfg)
    proc = subprocess.Popen(
        ["haproxy", "-db", "-f", str(path)],
        env={**os.environ, JWT_KEY_ENV: KEY},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # the gateway and its first health checks: well under 5 s
                try:
                    async with session.get(url) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"the gateway did not answer {url}")
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
async def gateway(
    ports: dict[str, int], upstream: Upstream, tmp_path: Path
) -> AsyncIterator[Gateway]:
    """The local platform's gateway: ``local_config``, every route to the one upstream."""
    port = ports["gateway"]
    servers = {s.name: [("127.0.0.1", upstream.port)] for s in SERVICE_TABLE if s.route}
    cfg = local_config(servers, port=port, metrics_port=ports["metrics"])
    key_file = tmp_path / "jwt-secret"
    key_file.write_text(KEY + "\n")
    assert gateway_environment(key_file) == {JWT_KEY_ENV: KEY}
    url = f"http://127.0.0.1:{port}"
    async with running_haproxy(cfg, tmp_path, f"{url}/api/products"):
        upstream.seen.clear()
        yield Gateway(url, port, upstream, Tokens(KEY.encode()))


# The edge gateway's budget per client address.
EDGE_RATE_LIMIT = RateLimit(requests=3, window_s=10)


@pytest.fixture
async def edge(ports: dict[str, int], upstream: Upstream, tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway behind a trusted load balancer that appends "<client>, <lb>" to
    X-Forwarded-For (GCP's), with a short request timeout, a small rate limit, and one
    service whose only server is down."""
    port = ports["edge"]
    routes = [
        Route("product", "products", StaticServers((("127.0.0.1", upstream.port),))),
        Route("user", "users", StaticServers((("127.0.0.1", ports["nothing-listens"]),))),
    ]
    cfg = haproxy_cfg(
        routes,
        port=port,
        metrics_port=ports["edge-metrics"],
        client_ip_header="X-Forwarded-For",
        client_ip_occurrence=-2,
        rate_limit=EDGE_RATE_LIMIT,
        timeouts=GatewayTimeouts(http_request_ms=500),
    )
    url = f"http://127.0.0.1:{port}"
    # The monitor-uri: answered before the rules, so it spends no client's budget.
    async with running_haproxy(cfg, tmp_path, f"{url}/healthz"):
        yield Gateway(url, port, upstream, Tokens(KEY.encode()))


async def call(
    gateway: Gateway, path: str, token: str | None = None, **kwargs: object
) -> tuple[int, CIMultiDict[str], dict[str, object]]:
    headers = dict(kwargs.pop("headers", {}))  # type: ignore[call-overload]
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as session:
        method = str(kwargs.pop("method", "GET"))
        async with session.request(method, gateway.url + path, headers=headers, **kwargs) as r:
            return r.status, r.headers.copy(), await r.json(content_type=None)


async def raw(port: int, request: bytes) -> tuple[int, CIMultiDict[str], bytes]:
    """Send exact bytes, read until HAProxy closes: status, headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = CIMultiDict(tuple(line.split(": ", 1)) for line in lines)
    return int(status_line.split()[1]), headers, body


def request(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: shop.test", *headers, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def assert_hardened(headers: CIMultiDict[str], cache_control: str = "no-store") -> None:
    """What every response through the gateway carries, and what it never does."""
    assert "Server" not in headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == cache_control


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
    # 500 requests per 10 s per client (RateLimit's default), then 429 with Retry-After; a
    # new forged X-Forwarded-For on each request does not make a new client.
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> tuple[int, str | None]:
            forged = {"X-Forwarded-For": f"10.0.{i // 256}.{i % 256}"}
            async with session.get(gateway.url + "/api/products", headers=forged) as r:
                return r.status, r.headers.get("Retry-After")

        answers = await asyncio.gather(*(one(i) for i in range(540)))
    limited = [retry for status, retry in answers if status == 429]
    passed = sum(status == 200 for status, _ in answers)
    # The fixture's readiness probes and the 413 above count too.
    assert 490 <= passed < 500 and passed + len(limited) == 540
    assert set(limited) == {"10"}


async def test_the_client_cannot_choose_the_address_services_see(gateway: Gateway) -> None:
    """Services take X-Forwarded-For as the client's address (the login throttle keys on
    it): whatever the client sends, they get exactly one value, the gateway's peer."""
    status, _, _ = await call(gateway, "/api/users", headers={"X-Forwarded-For": "6.6.6.6"})
    assert status == 200
    status, _, _ = await raw(
        gateway.port,
        request(
            "/api/users/login",
            "X-Forwarded-For: 6.6.6.6",
            "X-Forwarded-For: 7.7.7.7, 8.8.8.8",
            "Forwarded: for=6.6.6.6;proto=https",
            "X-Real-IP: 6.6.6.6",
        ),
    )
    assert status == 200
    assert len(gateway.upstream.seen) == 2
    for seen in gateway.upstream.seen:
        assert seen.headers.getall("X-Forwarded-For") == ["127.0.0.1"]
        assert "Forwarded" not in seen.headers and "X-Real-IP" not in seen.headers
        assert seen.forwarded == ()


async def test_behind_a_trusted_proxy_its_hop_is_the_client(edge: Gateway) -> None:
    """With ``client_ip_header`` the client is the value the load balancer wrote (second
    from the end), both upstream and for the rate limit; what the client put before it, in
    one header or two, is dropped."""
    lb = "130.211.0.1"
    attempts = [
        (["X-Forwarded-For: 6.6.6.6, 203.0.113.7, " + lb], "203.0.113.7"),
        (["X-Forwarded-For: 6.6.6.6", f"X-Forwarded-For: 203.0.113.8, {lb}"], "203.0.113.8"),
        # Not through the proxy, or no address where it writes one: the TCP peer.
        ([], "127.0.0.1"),
        (["X-Forwarded-For: not-an-address, also-not"], "127.0.0.1"),
    ]
    for headers, client in attempts:
        status, _, _ = await raw(edge.port, request("/api/products", *headers))
        assert status == 200
        assert edge.upstream.seen[-1].headers.getall("X-Forwarded-For") == [client], headers
    # The rate limit counts the same address: one client runs out, the next does not.
    budget = EDGE_RATE_LIMIT.requests
    answers = [
        (await raw(edge.port, request("/api/products", f"X-Forwarded-For: {ip}, {lb}")))[0]
        for ip in ["198.51.100.1"] * (budget + 1) + ["198.51.100.2"]
    ]
    assert answers == [200] * budget + [429, 200]


async def test_responses_carry_no_banner_and_are_not_cached(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        direct = f"http://127.0.0.1:{gateway.upstream.port}/api/products"
        async with session.get(direct) as r:
            assert r.headers["Server"].startswith("Python/")  # what the gateway must drop
    status, headers, _ = await call(gateway, "/api/products")
    assert status == 200
    assert_hardened(headers)
    # A service's own Cache-Control survives.
    cached = "public, max-age=60"
    status, headers, _ = await call(gateway, "/api/products", params={"cache_control": cached})
    assert status == 200
    assert_hardened(headers, cache_control=cached)
    # The gateway's own answers: the monitor-uri, a 404, a 401.
    for path, expected in [("/healthz", 200), ("/nope", 404), ("/api/orders", 401)]:
        status, headers, body = await call(gateway, path)
        assert status == expected, path
        assert headers["Content-Type"] == "application/json"
        assert_hardened(headers)
    assert body["error"] == "unauthorized"


async def test_malformed_requests_never_reach_a_service(gateway: Gateway) -> None:
    """HAProxy's HTTP/1 parser refuses these before any rule runs. HAProxy 2.6 (Debian 12,
    the gateway image) sends its built-in HTML there whatever the config says (HAProxy issue
    #3032, fixed in 3.2), so the README lists this as the one non-JSON answer; it echoes
    nothing of the request."""
    attacks = {
        "not HTTP": b"GARBAGE\r\n\r\n",
        "a space in a header name": request("/api/products", "X Forwarded-For: 6.6.6.6"),
        "two Content-Lengths": request("/api/users", "Content-Length: 1", "Content-Length: 2"),
        # Larger than HAProxy's buffer: it sends 400, never 414 or 431.
        "a 20 kB URI": request("/api/products/" + "a" * 20_000),
        "a 20 kB header": request("/api/products", "X-Pad: " + "a" * 20_000),
    }
    for attack, data in attacks.items():
        status, headers, body = await raw(gateway.port, data)
        assert status == 400, attack
        assert "Server" not in headers, attack
        assert not any(echo in body for echo in (b"GARBAGE", b"Forwarded", b"aaaa")), attack
    assert gateway.upstream.seen == []


async def test_slow_request_headers_are_cut_off(edge: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    try:
        writer.write(b"GET /api/products HTTP/1.1\r\nHost: shop.test\r\n")  # never ends
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=5)  # timeout http-request: 0.5 s
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert "/api/products" not in [seen.path for seen in edge.upstream.seen]


async def test_a_service_that_is_down_gets_a_json_503(edge: Gateway) -> None:
    status, headers, body = await call(edge, "/api/users/login")
    assert status == 503
    assert body == {"error": "service_unavailable", "request_id": headers["X-Request-ID"]}
    assert headers["Content-Type"] == "application/json"
    assert_hardened(headers)


def test_every_service_pod_takes_a_bounded_number_of_requests() -> None:
    """On GKE as locally, the gateway caps requests in flight per service pod (the rest queue
    at the gateway, bounded by `timeout queue`), so a burst cannot bury one event loop."""
    _, files = kubernetes_config()
    cfg = files["haproxy.cfg"]
    assert f"    default-server inter 2s fall 3 rise 2 maxconn {SERVER_MAXCONN}" in cfg.splitlines()
    assert "    timeout queue " in cfg


# --- stream routes (Server-Sent Events) ----------------------------------------------------------

# Small numbers, so the budgets and timeouts show in seconds: requests get 1 s to answer,
# streams promise a beat every 0.6 s (dead after 2.4 s of silence), 2 requests in flight per
# server, 3 open streams per client address.
REQUEST_TIMEOUT_MS = 1000
STREAMS = Streams(keepalive_ms=600, per_server=10, per_client=3)


@dataclass
class StreamingUpstream:
    """One inventory process: ordinary requests, and a feed that beats every `beat` seconds
    for `seconds` (or, with `silent`, says hello and then nothing)."""

    port: int
    open_streams: int = 0

    async def feed(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.open_streams += 1
        try:
            await response.write(b": connected\n\n")
            if "silent" in request.query:
                await asyncio.sleep(60)
            beat, seconds = float(request.query["beat"]), float(request.query["seconds"])
            for n in range(int(seconds / beat)):
                await asyncio.sleep(beat)
                await response.write(f"data: {n}\n\n".encode())
        finally:
            self.open_streams -= 1
        return response

    async def level(self, request: web.Request) -> web.Response:
        return web.json_response({"sku": request.match_info["sku"]})

    async def healthy(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


@pytest.fixture
async def streaming(ports: dict[str, int], tmp_path: Path) -> AsyncIterator[Gateway]:
    upstream = StreamingUpstream(ports["upstream"])
    app = web.Application()
    app.router.add_get("/api/inventory/feed", upstream.feed)
    app.router.add_get("/api/inventory/{sku}", upstream.level)
    app.router.add_get("/healthz", upstream.healthy)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", upstream.port).start()
    servers = StaticServers((("127.0.0.1", upstream.port),))
    cfg = haproxy_cfg(
        [
            Route("inventory", "inventory", servers, timeout_ms=REQUEST_TIMEOUT_MS),
            Route("inventory", "inventory/feed", servers, stream=True),
        ],
        port=ports["gateway"],
        metrics_port=ports["metrics"],
        server_maxconn=2,
        streams=STREAMS,
    )
    url = f"http://127.0.0.1:{ports['gateway']}"
    try:
        async with running_haproxy(cfg, tmp_path, f"{url}/api/inventory/SKU-1"):
            yield Gateway(url, ports["gateway"], upstream, Tokens(KEY.encode()))  # type: ignore[arg-type]
    finally:
        await runner.cleanup()


async def test_a_stream_lives_past_the_request_timeout_while_it_beats(streaming: Gateway) -> None:
    """Requests get 1 s to answer; a stream quiet for 1.5 s at a time (within its idle
    timeout, past the request timeout) runs its 6 s, whole."""
    async with aiohttp.ClientSession() as session:
        started = asyncio.get_running_loop().time()
        async with session.get(f"{streaming.url}/api/inventory/feed?beat=1.5&seconds=6") as r:
            assert r.status == 200
            body = await asyncio.wait_for(r.read(), timeout=20)
        took = asyncio.get_running_loop().time() - started
    assert body.count(b"data: ") == 4 and body.endswith(b"data: 3\n\n")
    assert took >= 6


async def test_a_silent_stream_is_cut_after_its_missed_beats(streaming: Gateway) -> None:
    """A stream that stops beating is dead: the gateway frees its slot after 4 missed beats
    (2.4 s here), not after the service's lifetime."""
    async with aiohttp.ClientSession() as session:
        started = asyncio.get_running_loop().time()
        async with session.get(f"{streaming.url}/api/inventory/feed?silent=1") as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(r.read(), timeout=20)
        took = asyncio.get_running_loop().time() - started
    assert STREAMS.idle_ms / 1000 <= took < 10


async def test_open_streams_never_take_a_requests_slot(streaming: Gateway) -> None:
    """More streams are open than a server takes requests (3 > 2), and ordinary requests
    still answer at once; a client's fourth stream is refused with a JSON 429; once one of
    its streams ends, it may open another."""
    upstream: StreamingUpstream = streaming.upstream  # type: ignore[assignment]
    feed = f"{streaming.url}/api/inventory/feed?beat=0.4&seconds=30"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=40)) as session:
        streams = [await session.get(feed) for _ in range(STREAMS.per_client)]
        try:
            assert [s.status for s in streams] == [200] * STREAMS.per_client
            for _ in range(50):  # every stream has reached the service
                if upstream.open_streams == STREAMS.per_client:
                    break
                await asyncio.sleep(0.05)
            assert upstream.open_streams == STREAMS.per_client
            levels = await asyncio.wait_for(
                asyncio.gather(*(call(streaming, f"/api/inventory/SKU-{n}") for n in range(6))),
                timeout=3,  # a request waiting for a slot would wait 5 s, then get a 503
            )
            assert [status for status, _, _ in levels] == [200] * 6

            async with session.get(feed) as refused:
                assert refused.status == 429
                body = await refused.json()
                assert body["error"] == "too_many_streams"
                assert body["max_streams"] == STREAMS.per_client
        finally:
            for stream in streams[1:]:
                stream.close()
        streams[0].close()
        for _ in range(50):  # the gateway has seen the streams go
            if upstream.open_streams == 0:
                break
            await asyncio.sleep(0.05)
        async with session.get(feed.replace("seconds=30", "seconds=1")) as again:
            assert again.status == 200 and (await again.read()).count(b"data: ") == 2


def test_every_stream_route_of_the_table_gets_its_own_backend() -> None:
    """The service table's streams, rendered for GKE: exact paths, own budgets, a timeout from
    the services' keep-alive (which the kit writes: services/kit/streams.py)."""
    _, files = kubernetes_config()
    sections = files["haproxy.cfg"].split("\n\n")
    lines = files["haproxy.cfg"].splitlines()
    for svc in SERVICE_TABLE:
        for path in svc.streams:
            name = path.replace("/", "_")
            backend = next(s for s in sections if s.startswith(f"backend be_{name}\n"))
            assert f"timeout server {Streams.IDLE_BEATS * int(KEEPALIVE_S * 1000)}ms" in backend
            assert f"maxconn {GATEWAY_STREAMS.per_server} resolvers" in backend
            assert f"    acl route_{name} path /api/{path}" in lines
            assert f"    acl route_{name} path_beg /api/{path}/" not in lines
    assert any(svc.streams for svc in SERVICE_TABLE)
