"""The gateway's routes, derived from the service table: `/api/<route>` -> service.

The same routes are rendered for Kubernetes (servers found through each service's headless
Service) and for the local platform (the services' local ports).
"""

from __future__ import annotations

from collections.abc import Callable

from components.conf.haproxy import DnsServers, Route, StaticServers
from stacks.services import SERVICE_TABLE, Service

# Routes whose every request must carry a valid access token (verified at the gateway).
AUTHENTICATED_ROUTES = frozenset({"orders"})


def routes(backend: Callable[[Service], DnsServers | StaticServers]) -> list[Route]:
    return [
        Route(
            service=svc.name,
            path_prefix=svc.route,
            backend=backend(svc),
            auth=svc.route in AUTHENTICATED_ROUTES,
        )
        for svc in SERVICE_TABLE
        if svc.route is not None
    ]


def pods_host(svc: Service) -> str:
    """The headless Service whose DNS answers are the service's ready pods."""
    return f"{svc.name}-pods.{svc.namespace}.svc.cluster.local"


def kubernetes_routes() -> list[Route]:
    return routes(lambda svc: DnsServers(pods_host(svc), svc.port, slots=svc.scaling.max_replicas))
