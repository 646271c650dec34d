"""The API gateway's ``haproxy.cfg`` (HAProxy 2.6), rendered from a list of routes.

Pure function, no I/O. Kubernetes puts the output in a ConfigMap and its routes point at
headless Services through ``server-template`` + DNS resolvers; the local platform writes it to
a temp dir, its routes list ``127.0.0.1:<port>`` servers, and runs ``haproxy -f <file>``.

What the gateway does, in order, for every request on the public frontend:

1. ``X-Request-ID``: keep the client's if it is one well-formed header, else a UUIDv4; sent
   upstream, returned on every response (including the gateway's own errors), logged.
2. Client address: the TCP source, or a trusted proxy's header (``client_ip_header``). It is
   the rate-limit key and goes upstream as the only ``X-Forwarded-For`` (the client's own
   ``X-Forwarded-For``, ``Forwarded`` and ``X-Real-IP`` are dropped): a service can take that
   header as the client's address, e.g. to throttle logins per address.
3. Per-client rate limit (stick table, ``http_req_rate``): 429 JSON with ``Retry-After``.
4. Body size limit: 413 JSON (411 for chunked bodies, whose size is unknown up front).
5. Routes with ``auth=True``: the JWT hook (see below).
6. ``/api/<prefix>`` and ``/api/<prefix>/...`` go to the route's backend (the path is
   forwarded unchanged); anything else gets a 404 JSON. A stream route (Server-Sent Events,
   ``Route.stream``) is one exact path with a backend of its own: an idle timeout derived from
   the service's keep-alive instead of the 5 s request timeout, its own slots per server so
   open streams never hold an ordinary request's, and at most ``Streams.per_client`` open
   streams per client address (429 JSON past it).

Every response leaves without a ``Server`` header (aiohttp's names its version), with
``X-Content-Type-Options: nosniff``, and with ``Cache-Control: no-store`` unless the service
set a Cache-Control itself (tokens and profiles must not sit in a shared cache). Every error
HAProxy generates once a request has been parsed is JSON. The exceptions are the 400 and 408
that HAProxy 2.6's HTTP/1 layer sends while it parses request headers (a malformed or
oversized request, slow headers), before any rule runs: that version always sends its
built-in HTML there, whatever the config says (HAProxy issue #3032, fixed in 3.2 by commit
d252ec2). They carry nothing from the request.

JWT (routes with ``auth=True``): the gateway itself checks the access token before the
request reaches a service: a ``Bearer`` token whose header says HS256, whose HS256 signature
verifies with the platform's signing key, whose ``type`` claim is ``access`` and whose ``exp``
lies in the future. Anything else is a 401 JSON answer that never reaches the service. The
services verify the same token again (defence in depth, and routes without ``auth`` still
carry optional identities).

The signing key never sits in this file (Kubernetes keeps the file in a ConfigMap): the
config names an environment variable, ``"${<jwt_key_env>}"``, that HAProxy expands when it
parses the file. The pod sets it from the signing-key Secret, the local runner from the key
file. HAProxy 2.6 has no way to read an HMAC key from a file. If the variable is unset or
empty the config refuses to load (an empty HMAC key would let anyone sign tokens).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9-]*(/[a-z0-9][a-z0-9-]*)*$")
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:]+\]?$")
_HEADER_RE = re.compile(r"^[A-Za-z0-9-]+$")
_ENV_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# Names of HAProxy-rendered objects, so tests and the runner can refer to them.
FRONTEND = "gateway"
METRICS_FRONTEND = "metrics"
NOT_FOUND_BACKEND = "be_not_found"
# The client's address as the gateway sees it (see _client_address).
CLIENT_IP_VAR = "txn.client_ip"
RESOLVERS = "dns"


def _check_port(port: int, what: str) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"{what} must be in 1..65535, got {port}")


def _check_host(host: str, what: str) -> None:
    if not _HOST_RE.match(host):
        raise ValueError(f"{what} {host!r} is not a hostname or IP")


@dataclass(frozen=True)
class StaticServers:
    """Fixed ``(host, port)`` servers: the local platform (one per service process)."""

    servers: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("StaticServers needs at least one server")
        for host, port in self.servers:
            _check_host(host, "server host")
            _check_port(port, "server port")


@dataclass(frozen=True)
class DnsServers:
    """Servers discovered through DNS: Kubernetes.

    ``fqdn`` should name a *headless* Service (``user.shop.svc.cluster.local``): its A records
    are the ready pods, so HAProxy balances and health-checks each pod itself. A ClusterIP
    Service works too but shows up as a single server. The name must be fully qualified:
    HAProxy's resolver does not apply resolv.conf search domains. ``slots`` caps the pods
    HAProxy tracks (set it to the service's HPA maximum).
    """

    fqdn: str
    port: int = 8080
    slots: int = 10

    def __post_init__(self) -> None:
        _check_host(self.fqdn, "DNS name")
        _check_port(self.port, "DNS service port")
        if not 1 <= self.slots <= 1000:
            raise ValueError("DnsServers.slots must be in 1..1000")


@dataclass(frozen=True)
class Route:
    """``/api/<path_prefix>`` and everything below it go to ``service``."""

    service: str
    path_prefix: str
    backend: StaticServers | DnsServers
    # Server timeout (time to first response byte) for this service.
    timeout_ms: int = 5000
    # Requests must carry a valid access token, checked at the gateway (module docstring).
    auth: bool = False
    health_path: str = "/healthz"
    # A long-lived response (Server-Sent Events) at exactly this path: its own backend, with
    # the idle timeout and connection budget of `Streams` instead of `timeout_ms` and the
    # per-server request cap, so open streams never take an ordinary request's slot.
    stream: bool = False

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.service):
            raise ValueError(f"route service {self.service!r} must be a DNS label")
        if not _PREFIX_RE.match(self.path_prefix):
            raise ValueError(
                f"route path_prefix {self.path_prefix!r}: lowercase segments without the "
                "leading /api/ (e.g. 'users' or 'users/me')"
            )
        if not 1 <= self.timeout_ms <= 600_000:
            raise ValueError("route timeout_ms must be in 1..600000")
        if not self.health_path.startswith("/") or " " in self.health_path:
            raise ValueError(f"route health_path {self.health_path!r} must be an absolute path")

    @property
    def path(self) -> str:
        return f"/api/{self.path_prefix}"

    @property
    def backend_name(self) -> str:
        if self.stream:  # be_inventory_feed: a service may have a request and stream routes
            return "be_" + re.sub(r"[/-]", "_", self.path_prefix)
        return f"be_{self.service}"


@dataclass(frozen=True)
class RateLimit:
    """Per-client request budget (per gateway replica: tables are not shared)."""

    # 500 per 10 s = 50 req/s per client IP: far above one shopper, room for users behind NAT.
    requests: int = 500
    window_s: int = 10
    table_size: int = 200_000

    def __post_init__(self) -> None:
        if self.requests < 1 or self.window_s < 1 or self.table_size < 1:
            raise ValueError("RateLimit fields must be >= 1")


@dataclass(frozen=True)
class Streams:
    """What stream routes get. ``keepalive_ms``: how often the service promises to write on a
    quiet stream (services/kit/streams.py); the gateway calls a stream dead after
    ``IDLE_BEATS`` missed beats, and needs the client side's idle timeout to allow two."""

    keepalive_ms: int = 15_000
    # Open streams per service process (pod): an idle SSE client costs a few KiB there.
    per_server: int = 1000
    # Open streams per client address at one gateway replica: a page needs one or two.
    per_client: int = 20
    table_size: int = 200_000

    IDLE_BEATS = 4

    def __post_init__(self) -> None:
        for name in ("keepalive_ms", "per_server", "per_client", "table_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"Streams.{name} must be >= 1")

    @property
    def idle_ms(self) -> int:
        return self.IDLE_BEATS * self.keepalive_ms


@dataclass(frozen=True)
class GatewayTimeouts:
    connect_ms: int = 2000
    # Idle time allowed on the client side while a request or response is in flight.
    client_ms: int = 30_000
    # Whole request (headers and, with http-buffer-request, body): cuts slowloris clients.
    http_request_ms: int = 10_000
    http_keep_alive_ms: int = 5000
    # Time a request may wait for a free server slot before a 503.
    queue_ms: int = 5000
    check_ms: int = 2000

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 1:
                raise ValueError(f"GatewayTimeouts.{name} must be >= 1 ms")


def _json_error(code: str, extra: str = "") -> str:
    """A JSON error body as an HAProxy lf-string, carrying the request id."""
    body = f'{{"error":"{code}",{extra}"request_id":"%[var(txn.request_id)]"}}'
    return f"content-type application/json lf-string '{body}'"


# Every status HAProxy 2.6 can generate itself (the list `http-error` accepts), made JSON like
# the services' errors. There is no 414 or 431: HAProxy answers 400 to a request line or
# headers too large for its buffer, and refuses `http-error status 414|431`.
_HTTP_ERRORS = (
    (400, "bad_request"),
    (401, "unauthorized"),
    (403, "forbidden"),
    (404, "not_found"),
    (405, "method_not_allowed"),
    (407, "proxy_authentication_required"),
    (408, "request_timeout"),
    (410, "gone"),
    (413, "payload_too_large"),
    (425, "too_early"),
    (429, "rate_limited"),
    (500, "internal_error"),
    (501, "not_implemented"),
    (502, "bad_gateway"),
    (503, "service_unavailable"),
    (504, "gateway_timeout"),
)
# Headers every response gets (set by `http-after-response`).
NOSNIFF = ("X-Content-Type-Options", "nosniff")
NO_STORE = ("Cache-Control", "no-store")


def haproxy_cfg(
    routes: Sequence[Route],
    *,
    port: int = 8080,
    bind: str = "127.0.0.1",
    metrics_port: int = 8404,
    metrics_bind: str = "127.0.0.1",
    max_body_bytes: int = 1024 * 1024,
    rate_limit: RateLimit | None = RateLimit(),
    timeouts: GatewayTimeouts = GatewayTimeouts(),
    maxconn: int = 8000,
    nbthread: int | None = None,
    client_ip_header: str | None = None,
    client_ip_occurrence: int = -1,
    stats_socket: str | None = None,
    allow_chunked_bodies: bool = False,
    jwt_key_env: str | None = None,
    server_maxconn: int | None = None,
    streams: Streams = Streams(),
    request_id_pattern: str | None = None,
) -> str:
    """Render ``haproxy.cfg`` for the API gateway.

    ``bind``/``metrics_bind`` default to loopback; Kubernetes passes ``0.0.0.0`` (8080 and
    8404 are unprivileged: the container runs as non-root). ``/metrics`` (Prometheus) and a
    ``/healthz`` live on the separate metrics port so scrapes never share the public
    frontend's rate limit. ``client_ip_header``: only when a trusted proxy in front of the
    gateway sets it (e.g. ``X-Forwarded-For`` from the load balancer); value number
    ``client_ip_occurrence`` (negative counts from the end: -1 is the last, which a proxy
    appends; GCP's HTTP(S) load balancer appends "<client>, <lb>", so -2 there) is the
    rate-limit key. Without it the key is the TCP source address.
    ``maxconn`` is per replica (the HPA adds replicas); HAProxy needs about 2 file
    descriptors per connection and refuses to start if ``ulimit -n`` is below that.
    ``nbthread``: set it to the container's CPU limit (HAProxy sizes itself from the node's
    CPUs otherwise). ``stats_socket``: an admin socket path (drills use it to drain servers).
    ``allow_chunked_bodies=False`` answers 411 to chunked request bodies: the gateway can only
    enforce ``max_body_bytes`` on a declared Content-Length (the services still enforce their
    own limit, e.g. aiohttp's ``client_max_size``, whichever way the body arrives).
    ``jwt_key_env``: the environment variable holding the token signing key; required as soon
    as one route has ``auth=True`` (the gateway never lets such a route go unchecked).
    ``server_maxconn``: requests in flight per server (service process); more wait in the
    gateway's queue (``timeout queue``) instead of piling up inside one event loop.
    ``streams``: the idle timeout and connection budgets of routes with ``stream=True``.
    ``request_id_pattern``: a regular expression a client's X-Request-ID must match to be
    kept (the services' own, safe to log and to echo into JSON); None: every request gets a
    new id.
    """
    if not routes:
        raise ValueError("the gateway needs at least one route")
    _check_port(port, "gateway port")
    _check_port(metrics_port, "gateway metrics port")
    if (bind, port) == (metrics_bind, metrics_port):
        raise ValueError("gateway and metrics frontends cannot share an address")
    _check_host(bind, "gateway bind")
    _check_host(metrics_bind, "metrics bind")
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be >= 1")
    if maxconn < 1:
        raise ValueError("maxconn must be >= 1")
    if server_maxconn is not None and server_maxconn < 1:
        raise ValueError("server_maxconn must be >= 1")
    if nbthread is not None and nbthread < 1:
        raise ValueError("nbthread must be >= 1")
    if client_ip_header is not None and not _HEADER_RE.match(client_ip_header):
        raise ValueError(f"client_ip_header {client_ip_header!r} is not a header name")
    if client_ip_occurrence == 0:
        raise ValueError("client_ip_occurrence counts from 1 (or from the end, -1)")
    if any(r.auth for r in routes) and jwt_key_env is None:
        raise ValueError("routes with auth=True need jwt_key_env (the signing key's variable)")
    if jwt_key_env is not None and not _ENV_RE.match(jwt_key_env):
        raise ValueError(f"jwt_key_env {jwt_key_env!r} is not an environment variable name")
    for attr in ("backend_name", "path_prefix"):
        values = [getattr(r, attr) for r in routes]
        if len(set(values)) != len(values):
            raise ValueError(f"route {attr} values must be unique")
    if request_id_pattern is not None and (
        not request_id_pattern or any(c.isspace() for c in request_id_pattern)
    ):
        raise ValueError(f"request_id_pattern {request_id_pattern!r}: expected a regex, no spaces")
    if any(r.stream for r in routes) and timeouts.client_ms < 2 * streams.keepalive_ms:
        raise ValueError(
            f"timeout client ({timeouts.client_ms} ms) would cut a quiet stream: streams write "
            f"every {streams.keepalive_ms} ms, so it must be at least twice that"
        )

    # Longest prefix first, so /api/users/me wins over /api/users.
    ordered = sorted(routes, key=lambda r: (-r.path.count("/"), -len(r.path), r.path))
    out: list[str] = ["# API gateway; rendered by components/conf/haproxy.py (do not edit)."]
    if jwt_key_env is not None:
        out += _require_env(jwt_key_env)
    out += _global(maxconn, nbthread, stats_socket)
    if any(isinstance(r.backend, DnsServers) for r in routes):
        out += _resolvers()
    out += _defaults(timeouts, server_maxconn)
    out += _frontend(
        ordered,
        bind,
        port,
        max_body_bytes,
        rate_limit,
        client_ip_header,
        client_ip_occurrence,
        allow_chunked_bodies,
        jwt_key_env,
        request_id_pattern,
    )
    out += _not_found_backend()
    for route in ordered:
        out += _stream_backend(route, streams) if route.stream else _backend(route)
    out += _metrics_frontend(metrics_bind, metrics_port)
    return "\n".join(out) + "\n"


def _require_env(name: str) -> list[str]:
    """Refuse to load without the variable: ``haproxy -c`` and the start fail, naming it."""
    return [
        "",
        f'.if !defined({name}) || streq("${name}","")',
        f'.alert "environment variable {name} (the JWT signing key) is not set or empty"',
        ".endif",
    ]


def _global(maxconn: int, nbthread: int | None, stats_socket: str | None) -> list[str]:
    lines = [
        "",
        "global",
        # Logs to stdout: container logs in Kubernetes, the runner's capture locally.
        "    log stdout format raw local0 info",
        f"    maxconn {maxconn}",
        # Old processes finish in-flight requests after a reload, but not forever.
        "    hard-stop-after 30s",
    ]
    if nbthread is not None:
        lines.append(f"    nbthread {nbthread}")
    if stats_socket is not None:
        lines.append(f"    stats socket {stats_socket} mode 600 level admin")
    return lines


def _resolvers() -> list[str]:
    return [
        "",
        f"resolvers {RESOLVERS}",
        # The pod's resolv.conf names the cluster DNS: no cluster-specific IP in this file.
        "    parse-resolv-conf",
        "    accepted_payload_size 8192",
        "    resolve_retries 3",
        "    timeout resolve 1s",
        "    timeout retry 1s",
        # Re-resolve every 5 s so scaled pods join fast; keep the last answer 30 s on errors.
        "    hold valid 5s",
        "    hold obsolete 30s",
        "    hold other 30s",
        "    hold refused 30s",
        "    hold nx 30s",
        "    hold timeout 30s",
    ]


def _defaults(t: GatewayTimeouts, server_maxconn: int | None) -> list[str]:
    lines = [
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option dontlognull",
        # No `option forwardfor`: it appends to the client's X-Forwarded-For, whose first
        # value the client chose. The frontend sets the header instead (step 2).
        # Retry only when the connection could not be made: the request never reached a
        # service, so even a POST (order, payment) cannot run twice.
        "    retries 2",
        "    retry-on conn-failure",
        "    option redispatch 1",
        f"    timeout connect {t.connect_ms}ms",
        f"    timeout client {t.client_ms}ms",
        "    timeout server 5000ms",
        f"    timeout http-request {t.http_request_ms}ms",
        f"    timeout http-keep-alive {t.http_keep_alive_ms}ms",
        f"    timeout queue {t.queue_ms}ms",
        f"    timeout check {t.check_ms}ms",
        "    default-server inter 2s fall 3 rise 2"
        + (f" maxconn {server_maxconn}" if server_maxconn is not None else ""),
    ]
    lines += [f"    http-error status {code} {_json_error(name)}" for code, name in _HTTP_ERRORS]
    # The answer to the frontend's monitor-uri (/healthz).
    healthy = '{"status":"ok"}'
    lines.append(f"    http-error status 200 content-type application/json string '{healthy}'")
    return lines


def _route_acl(route: Route) -> str:
    return "route_" + route.backend_name.removeprefix("be_").replace("-", "_")


def _frontend(
    routes: Sequence[Route],
    bind: str,
    port: int,
    max_body_bytes: int,
    rate_limit: RateLimit | None,
    client_ip_header: str | None,
    client_ip_occurrence: int,
    allow_chunked_bodies: bool,
    jwt_key_env: str | None,
    request_id_pattern: str | None,
) -> list[str]:
    keep_client_id = (
        [
            "    http-request set-var(txn.request_id) req.fhdr(x-request-id) "
            "if { req.fhdr_cnt(x-request-id) eq 1 } "
            f"{{ req.fhdr(x-request-id) -m reg {request_id_pattern} }}",
        ]
        if request_id_pattern is not None
        else []
    )
    lines = [
        "",
        f"frontend {FRONTEND}",
        f"    bind {bind}:{port}",
        # The gateway's own liveness/readiness: answered here, never forwarded, not logged.
        "    monitor-uri /healthz",
        # Wait for the body before the rules run: body size known for chunked requests too,
        # and `timeout http-request` covers a slowly sent body.
        "    option http-buffer-request",
        "    unique-id-format %[var(txn.request_id)]",
        '    log-format "%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc '
        '%ac/%fc/%bc/%sc/%rc %sq/%bq %hr %hs %{+Q}r %ID"',
        "",
        "    # 1. X-Request-ID: the client's if it is a single well-formed header, else a UUID.",
        *keep_client_id,
        "    http-request set-var(txn.request_id) uuid() unless { var(txn.request_id) -m found }",
        "    http-request set-header X-Request-ID %[var(txn.request_id)]",
        "    http-after-response set-header X-Request-ID %[var(txn.request_id)] "
        "if { var(txn.request_id) -m found }",
        # On every response, the services' and the gateway's own (http-after-response).
        "    http-after-response del-header Server",
        "    http-after-response set-header " + " ".join(NOSNIFF),
        # Unless the service chose its own (a catalog's caching headers survive).
        "    http-after-response set-header "
        + " ".join(NO_STORE)
        + " unless { res.hdr(cache-control) -m found }",
    ]
    lines += _client_address(client_ip_header, client_ip_occurrence)
    if rate_limit is not None:
        window = rate_limit.window_s
        lines += [
            "",
            f"    # 3. Rate limit: {rate_limit.requests} requests per {window}s per client.",
            f"    stick-table type ipv6 size {rate_limit.table_size} expire {2 * window}s "
            f"store http_req_rate({window}s)",
            f"    http-request track-sc0 var({CLIENT_IP_VAR})",
            "    http-request deny deny_status 429 "
            + _json_error("rate_limited", f'"retry_after_s":{window},')
            + f" hdr Retry-After {window}"
            + f" if {{ sc_http_req_rate(0) gt {rate_limit.requests} }}",
        ]
    lines += [
        "",
        f"    # 4. Body size: at most {max_body_bytes} bytes.",
        "    http-request deny deny_status 413 "
        + _json_error("payload_too_large", f'"max_bytes":{max_body_bytes},')
        + f" if {{ req.body_size gt {max_body_bytes} }}",
    ]
    if not allow_chunked_bodies:
        lines += [
            "    # A chunked body's size is unknown until it is read, and HAProxy buffers only",
            "    # tune.bufsize of it: the limit above holds for declared lengths only. JSON",
            "    # clients send Content-Length, so require it (411) instead of a hole.",
            "    http-request deny deny_status 411 "
            + _json_error("length_required")
            + " if { req.hdr(transfer-encoding) -m found }",
        ]
    lines += [
        "",
        "    # 6. Routes: /api/<prefix> and /api/<prefix>/...",
    ]
    for route in routes:
        acl = _route_acl(route)
        lines.append(f"    acl {acl} path {route.path}")
        if not route.stream:  # a stream is one resource; a request route is a subtree
            lines.append(f"    acl {acl} path_beg {route.path}/")
    auth_routes = [r for r in routes if r.auth]
    if auth_routes and jwt_key_env is not None:
        lines += _jwt_rules(auth_routes, jwt_key_env)
    lines.append("")
    lines += [f"    use_backend {r.backend_name} if {_route_acl(r)}" for r in routes]
    lines.append(f"    default_backend {NOT_FOUND_BACKEND}")
    return lines


def _client_address(header: str | None, occurrence: int) -> list[str]:
    """Step 2: the one client address, kept in a variable so that the rate limit and the
    X-Forwarded-For sent upstream cannot disagree (and so replacing that header cannot change
    what the rate limit reads)."""
    lines = ["", "    # 2. Client address: the rate-limit key, the only X-Forwarded-For upstream."]
    if header is None:
        lines.append(f"    http-request set-var({CLIENT_IP_VAR}) src")
    else:
        lines += [
            f"    http-request set-var({CLIENT_IP_VAR}) req.hdr_ip({header},{occurrence})",
            # No (or no valid) header: not through the trusted proxy; the peer is the client,
            # never "no address" (which would skip the rate limit).
            f"    http-request set-var({CLIENT_IP_VAR}) src "
            f"unless {{ var({CLIENT_IP_VAR}) -m found }}",
        ]
    lines += [
        # Other client-chosen address headers a service or library might believe.
        "    http-request del-header Forwarded",
        "    http-request del-header X-Real-IP",
        f"    http-request set-header X-Forwarded-For %[var({CLIENT_IP_VAR})]",
    ]
    return lines


def _jwt_rules(auth_routes: Sequence[Route], key_env: str) -> list[str]:
    names = ", ".join(r.service for r in auth_routes)
    token = "http_auth_bearer"
    checks = ("jwt_hs256", "jwt_signed", "jwt_access", "jwt_live")
    unauthorized = "http-request deny deny_status 401 " + _json_error(
        "unauthorized", '"reason":"%[var(txn.jwt_problem)]",'
    )
    return [
        "",
        f"    # 5. JWT on {names}: HS256 header and signature, an access token, not expired.",
        "    http-request set-var(txn.needs_token) bool(1) if "
        + " || ".join(_route_acl(r) for r in auth_routes),
        "    acl needs_token var(txn.needs_token) -m bool",
        f"    acl has_token {token} -m found",
        f"    acl jwt_hs256 {token},jwt_header_query('$.alg') -m str HS256",
        f'    acl jwt_signed {token},jwt_verify("HS256","${{{key_env}}}") -m int 1',
        f"    acl jwt_access {token},jwt_payload_query('$.type') -m str access",
        "    acl jwt_live var(txn.jwt_exp),sub(txn.now) gt 0",
        f"    http-request set-var(txn.jwt_exp) {token},jwt_payload_query('$.exp','int') "
        "if needs_token has_token",
        "    http-request set-var(txn.now) date() if needs_token",
        # RFC 6750's error codes, so clients can tell "log in" from "refresh your token".
        "    http-request set-var(txn.jwt_problem) str(missing_token) if needs_token !has_token",
        "    http-request set-var(txn.jwt_problem) str(invalid_token) if needs_token has_token",
        f'    {unauthorized} hdr WWW-Authenticate "Bearer" if '
        + " || ".join(f"needs_token !{check}" for check in checks),
    ]


def _not_found_backend() -> list[str]:
    return [
        "",
        f"backend {NOT_FOUND_BACKEND}",
        f"    http-request return status 404 {_json_error('not_found')}",
    ]


def _backend(route: Route) -> list[str]:
    return [
        "",
        f"backend {route.backend_name}",
        # Least outstanding requests: a pod stuck in a slow query gets fewer new ones.
        "    balance leastconn",
        f"    timeout server {route.timeout_ms}ms",
        *_servers(route),
    ]


def _stream_backend(route: Route, streams: Streams) -> list[str]:
    """A long-lived route: the same servers as its service's requests, but its own slots
    (``maxconn`` per server) and its own idle timeout, and a cap per client address."""
    too_many = "http-request deny deny_status 429 " + _json_error(
        "too_many_streams", f'"max_streams":{streams.per_client},'
    )
    return [
        "",
        f"backend {route.backend_name}",
        # Fewest open streams: a new pod after a scale-up takes the new ones.
        "    balance leastconn",
        f"    # The service writes at least every {streams.keepalive_ms} ms: "
        f"{Streams.IDLE_BEATS} missed beats is a dead stream.",
        f"    timeout server {streams.idle_ms}ms",
        f"    stick-table type ipv6 size {streams.table_size} "
        f"expire {streams.idle_ms}ms store conn_cur",
        f"    http-request track-sc1 var({CLIENT_IP_VAR})",
        f"    {too_many} if {{ sc_conn_cur(1) gt {streams.per_client} }}",
        *_servers(route, maxconn=streams.per_server),
    ]


def _servers(route: Route, maxconn: int | None = None) -> list[str]:
    """Health checks and the servers; ``maxconn`` overrides the default per-server cap."""
    lines = [
        "    option httpchk",
        f"    http-check send meth GET uri {route.health_path}",
        "    http-check expect status 200",
    ]
    options = "check" + (f" maxconn {maxconn}" if maxconn is not None else "")
    backend = route.backend
    if isinstance(backend, StaticServers):
        lines += [
            f"    server {route.service}-{i} {host}:{port} {options}"
            for i, (host, port) in enumerate(backend.servers, start=1)
        ]
    else:
        # init-addr none: start (and pass `haproxy -c`) even before the Service resolves.
        lines.append(
            f"    server-template {route.service}- 1-{backend.slots} "
            f"{backend.fqdn}:{backend.port} {options} resolvers {RESOLVERS} "
            "resolve-prefer ipv4 init-addr none"
        )
    return lines


def _metrics_frontend(bind: str, port: int) -> list[str]:
    return [
        "",
        f"frontend {METRICS_FRONTEND}",
        f"    bind {bind}:{port}",
        "    no log",
        "    monitor-uri /healthz",
        # Built into HAProxy 2.6 (Debian's build includes the exporter): no sidecar.
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "    http-request return status 404 content-type application/json "
        """string '{"error":"not_found"}'""",
    ]


__all__ = [
    "DnsServers",
    "GatewayTimeouts",
    "RateLimit",
    "Route",
    "StaticServers",
    "Streams",
    "haproxy_cfg",
]
