"""The gateway's routes, derived from the service table: `/api/<route>` -> service.

The same routes are rendered for Kubernetes (servers found through each service's headless
Service) and for the local platform (the services' local ports). Either way HAProxy needs the
token signing key in the environment variable ``JWT_KEY_ENV`` (never in the rendered file):
the pod gets it from the signing-key Secret, the local runner from ``gateway_environment``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath

from components.conf.haproxy import (
    DnsServers,
    RateLimit,
    Route,
    StaticServers,
    Streams,
    haproxy_cfg,
)
from services.kit.exports import REQUEST_ID_PATTERN
from services.kit.streams import KEEPALIVE_S
from stacks.services import GATEWAY_CONFIG, SERVICE_TABLE, SERVICES, Service

# Routes whose every request must carry a valid access token (verified at the gateway).
AUTHENTICATED_ROUTES = frozenset({"orders"})
# The variable HAProxy reads the HS256 signing key from (components/conf/haproxy.py).
JWT_KEY_ENV = "GATEWAY_JWT_KEY"
# The per-client budget the local gateway applies unless told otherwise (as on GKE).
DEFAULT_RATE_LIMIT = RateLimit()
# Requests in flight per service process (pod); more wait in the gateway's queue, in order,
# for at most `timeout queue`. Uncapped, a burst put ~1,000 requests into one event loop:
# its /readyz answered too late, HAProxy marked it DOWN, and every request to the service got
# a 503 (the bench's mix: 21 % errors; with this cap, 0.06 % at the same throughput).
SERVER_MAXCONN = 64
# Stream routes (Server-Sent Events): idle timeout from the services' keep-alive, and slots
# of their own (components/conf/haproxy.py `Streams`).
STREAMS = Streams(keepalive_ms=int(KEEPALIVE_S * 1000))


def routes(backend: Callable[[Service], DnsServers | StaticServers]) -> list[Route]:
    """Each routed service's requests, and each of its streams as a route of its own."""
    found = []
    for svc in SERVICE_TABLE:
        if svc.route is None:
            continue
        for path, stream in ((svc.route, False), *((p, True) for p in svc.streams)):
            found.append(
                Route(
                    service=svc.name,
                    path_prefix=path,
                    backend=backend(svc),
                    auth=svc.route in AUTHENTICATED_ROUTES,
                    # Readiness, not liveness: a draining or dependency-less instance gets
                    # no traffic.
                    health_path="/readyz",
                    stream=stream,
                )
            )
    return found


def pods_host(svc: Service) -> str:
    """The headless Service whose DNS answers are the service's ready pods."""
    return f"{svc.name}-pods.{svc.namespace}.svc.cluster.local"


def kubernetes_routes() -> list[Route]:
    return routes(lambda svc: DnsServers(pods_host(svc), svc.port, slots=svc.scaling.max_replicas))


def kubernetes_config() -> tuple[str, dict[str, str]]:
    """The gateway pods' config directory and files: listening on the pod's interfaces, one
    HAProxy thread per CPU of the container's limit."""
    gateway = SERVICES["gateway"]
    path = PurePosixPath(GATEWAY_CONFIG)
    cfg = haproxy_cfg(
        kubernetes_routes(),
        port=gateway.port,
        bind="0.0.0.0",
        metrics_port=gateway.metrics_port,
        metrics_bind="0.0.0.0",
        nbthread=max(1, int(float(gateway.resources.cpu_limit))),
        server_maxconn=SERVER_MAXCONN,
        jwt_key_env=JWT_KEY_ENV,
        streams=STREAMS,
        request_id_pattern=REQUEST_ID_PATTERN,
    )
    return str(path.parent), {path.name: cfg}


def local_config(
    servers: Mapping[str, Sequence[tuple[str, int]]],
    *,
    port: int,
    metrics_port: int,
    stats_socket: str | None = None,
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
    server_maxconn: int | None = SERVER_MAXCONN,
) -> str:
    """The local platform's haproxy.cfg: ``servers`` maps each routed service to its
    processes' ``(host, port)``; both frontends listen on loopback only. ``rate_limit``:
    the per-client budget (None: none, e.g. for a benchmark whose load comes from one
    address). ``server_maxconn``: requests in flight per service process (None: no cap)."""
    missing = sorted(svc.name for svc in SERVICE_TABLE if svc.route and svc.name not in servers)
    if missing:
        raise ValueError(f"no local servers for routed services: {', '.join(missing)}")
    return haproxy_cfg(
        routes(lambda svc: StaticServers(tuple(servers[svc.name]))),
        port=port,
        metrics_port=metrics_port,
        stats_socket=stats_socket,
        rate_limit=rate_limit,
        server_maxconn=server_maxconn,
        jwt_key_env=JWT_KEY_ENV,
        streams=STREAMS,
        request_id_pattern=REQUEST_ID_PATTERN,
    )


def gateway_environment(jwt_secret_file: str | Path) -> dict[str, str]:
    """What the local HAProxy process needs in its environment: the signing key."""
    return {JWT_KEY_ENV: Path(jwt_secret_file).read_text().strip()}
