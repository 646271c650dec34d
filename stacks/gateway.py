"""The gateway's routes, derived from the service table: `/api/<route>` -> service.

The same routes are rendered for Kubernetes (servers found through each service's headless
Service) and for the local platform (the services' local ports).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath

from components.conf.haproxy import DnsServers, Route, StaticServers, haproxy_cfg
from stacks.services import GATEWAY_CONFIG, SERVICE_TABLE, SERVICES, Service

# Routes whose every request must carry a valid access token (verified at the gateway).
AUTHENTICATED_ROUTES = frozenset({"orders"})


def routes(backend: Callable[[Service], DnsServers | StaticServers]) -> list[Route]:
    return [
        Route(
            service=svc.name,
            path_prefix=svc.route,
            backend=backend(svc),
            auth=svc.route in AUTHENTICATED_ROUTES,
            # Readiness, not liveness: a draining or dependency-less instance gets no traffic.
            health_path="/readyz",
        )
        for svc in SERVICE_TABLE
        if svc.route is not None
    ]


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
    )
    return str(path.parent), {path.name: cfg}
