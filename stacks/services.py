"""The service table: the one description of every workload the platform runs.

Each row drives the Kubernetes Deployment, Service, HPA, PDB, ServiceMonitor and
NetworkPolicies of a service, the gateway's routes, and the local platform's process list.
Numbers are the seed architecture's (replicas, HPA targets and behaviours, custom metrics).
Who may call whom is stated once, as `callers`; every network path is derived from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from components import memcached, postgres, redis
from components.kube import Endpoint, NodePoolName
from components.microservice import CustomMetric, Resources, ScalePolicy, Scaling, Workload
from components.network_policy import MONITORING_NAMESPACE
from services.kit.exports import ORDER_QUEUE_DEPTH, PRODUCT_CACHE_MISS_RATIO
from stacks.alerts import GATEWAY_RPS

SERVICE_PORT = 8080  # every service and the gateway listen here (non-root, > 1024)
INTERNET = "internet"  # the caller name for traffic from outside the cluster
GATEWAY_CONFIG = "/etc/haproxy/haproxy.cfg"  # rendered by stacks/gateway.py


class Dependency(StrEnum):
    POSTGRES = "postgres"
    REDIS = "redis"
    MEMCACHED = "memcached"


# The outside parties services call over HTTPS on the public internet. The stack config gives
# each one's URL (stacks.config StackConfig.outside_urls), the secret config its key
# (`<name>ApiKey`); a service gets <NAME>_URL and <NAME>_API_KEY_FILE for each it calls.
OutsideParty = Literal["stripe", "paypal", "warehouse"]
OUTSIDE_PARTIES: tuple[OutsideParty, ...] = ("stripe", "paypal", "warehouse")


@dataclass(frozen=True)
class Service:
    name: str
    summary: str
    namespace: str
    scaling: Scaling
    resources: Resources
    callers: frozenset[str]
    needs: frozenset[Dependency] = frozenset()
    # PostgreSQL connections one pod (process) holds at most (DATABASE_POOL_MAX). PgPool-II's
    # children are sized for every pod at its HPA maximum (stacks/config.py checks it).
    database_connections: int = 4
    route: str | None = None  # the gateway serves it at /api/<route>
    # Paths under the route that answer with a long-lived stream (Server-Sent Events): the
    # gateway gives each its own timeouts and connection budget.
    streams: tuple[str, ...] = ()
    node_pool: NodePoolName = "apps"
    # The outside parties it calls (egress to the internet on 443: nothing else leaves the VPC).
    outside: tuple[OutsideParty, ...] = ()
    # Sends e-mail (password resets) through the stack's SMTP relay (stacks.config SmtpConfig):
    # it gets the SMTP_* settings, the reset key and egress to the relay's port.
    sends_mail: bool = False
    port: int = SERVICE_PORT
    metrics_port: int = SERVICE_PORT
    # The build target of services/Dockerfile this workload runs.
    image: Literal["service", "gateway"] = "service"
    command: tuple[str, ...] = ()

    @property
    def argv(self) -> tuple[str, ...]:
        """What the container (or the local runner) executes for this service."""
        return self.command or ("python", "-m", f"services.{self.name}")

    @property
    def is_public(self) -> bool:
        return INTERNET in self.callers

    @property
    def workload(self) -> Workload:
        """This row as the Microservice component takes it."""
        return Workload(
            name=self.name,
            namespace=self.namespace,
            argv=self.argv,
            resources=self.resources,
            scaling=self.scaling,
            node_pool=self.node_pool,
            port=self.port,
            metrics_port=self.metrics_port,
            public=self.is_public,
            pods_service=self.route is not None,  # the gateway balances over the pods
            probes="haproxy" if self.image == "gateway" else "service",
        )


_APP_RESOURCES = Resources("250m", "256Mi", "1", "512Mi")

# Seed: "Scale up: 50% increase every 15s", "Scale down: 10% decrease every 60s", and so on.
SERVICE_TABLE: tuple[Service, ...] = (
    Service(
        name="gateway",
        summary="Public entry: routes /api/* to the services, rate limits, request ids",
        namespace="shop",
        scaling=Scaling(
            min_replicas=3,
            max_replicas=12,
            cpu_percent=70,
            memory_percent=80,
            scale_up=ScalePolicy(100, 15),
            scale_down=ScalePolicy(10, 60, stabilization_seconds=300),
            custom_metric=CustomMetric(
                name=GATEWAY_RPS,  # a recording rule over HAProxy's own metrics
                target="1000",
                per_pod=True,
                why="seed: keep each gateway instance under 1,000 requests/s",
            ),
        ),
        resources=Resources("250m", "128Mi", "1", "256Mi"),
        callers=frozenset({INTERNET}),
        metrics_port=8404,  # HAProxy's built-in Prometheus exporter, apart from the traffic
        image="gateway",
        command=("haproxy", "-W", "-db", "-f", GATEWAY_CONFIG),
    ),
    Service(
        name="user",
        summary="Registration, login (JWT), sessions, profiles, password reset",
        namespace="shop",
        scaling=Scaling(
            min_replicas=3,
            max_replicas=10,
            cpu_percent=70,
            memory_percent=80,
            scale_up=ScalePolicy(100, 15),
            scale_down=ScalePolicy(10, 60, stabilization_seconds=300),
        ),
        resources=_APP_RESOURCES,
        callers=frozenset({"gateway"}),
        needs=frozenset({Dependency.POSTGRES, Dependency.REDIS}),
        route="users",
        sends_mail=True,
    ),
    Service(
        name="product",
        summary="Catalog, categories, search, recommendations (read heavy, cached)",
        namespace="shop",
        scaling=Scaling(
            min_replicas=5,
            max_replicas=20,
            cpu_percent=65,
            memory_percent=75,
            scale_up=ScalePolicy(50, 15),
            scale_down=ScalePolicy(10, 60, stabilization_seconds=60),
            custom_metric=CustomMetric(
                # An HPA scales up when a metric rises above target, so the seed's "hit ratio
                # above 85 %" is expressed as "miss ratio below 15 %".
                name=PRODUCT_CACHE_MISS_RATIO,
                target="150m",
                per_pod=True,
                why="seed: scale up when the cache hit ratio drops below 85 %",
            ),
        ),
        resources=Resources("500m", "384Mi", "2", "768Mi"),
        callers=frozenset({"gateway", "order"}),
        needs=frozenset({Dependency.POSTGRES, Dependency.REDIS, Dependency.MEMCACHED}),
        route="products",
    ),
    Service(
        name="order",
        summary="Carts, orders, the checkout saga and order history",
        namespace="shop",
        scaling=Scaling(
            min_replicas=3,
            max_replicas=15,
            cpu_percent=70,
            memory_percent=80,
            scale_up=ScalePolicy(100, 15),
            scale_down=ScalePolicy(10, 300, stabilization_seconds=300),
            custom_metric=CustomMetric(
                name=ORDER_QUEUE_DEPTH,
                target="100",
                per_pod=False,
                why="seed: scale up when more than 100 orders per replica are pending",
            ),
        ),
        resources=_APP_RESOURCES,
        callers=frozenset({"gateway"}),
        needs=frozenset({Dependency.POSTGRES, Dependency.REDIS}),
        database_connections=6,  # 4 for the API, 2 for the saga's workers (split_pool)
        route="orders",
        outside=("warehouse",),  # fulfilment hands confirmed orders to it
    ),
    Service(
        name="payment",
        summary="Payments over two providers with breakers, retries and refunds",
        namespace="payments",
        scaling=Scaling(
            min_replicas=2,
            max_replicas=8,
            cpu_percent=60,
            memory_percent=70,
            scale_up=ScalePolicy(25, 30, stabilization_seconds=60),
            scale_down=ScalePolicy(5, 600, stabilization_seconds=600),
        ),
        resources=_APP_RESOURCES,
        # Isolated: only the order service's saga reaches it, never the gateway.
        callers=frozenset({"order"}),
        needs=frozenset({Dependency.POSTGRES, Dependency.REDIS}),
        database_connections=3,  # one write per payment step, provider calls between
        node_pool="payments",
        outside=("stripe", "paypal"),  # the primary first: it fails over to the second
    ),
    Service(
        name="inventory",
        summary="Stock, reservations, the audit trail and the live stock feed",
        namespace="shop",
        scaling=Scaling(
            min_replicas=4,
            max_replicas=12,
            cpu_percent=70,
            memory_percent=80,
            scale_up=ScalePolicy(100, 15),
            scale_down=ScalePolicy(10, 60, stabilization_seconds=300),
        ),
        resources=_APP_RESOURCES,
        callers=frozenset({"gateway", "order"}),
        needs=frozenset({Dependency.POSTGRES, Dependency.REDIS}),
        route="inventory",
        streams=("inventory/feed",),
    ),
)

SERVICES: dict[str, Service] = {service.name: service for service in SERVICE_TABLE}


def callees(name: str) -> list[Service]:
    """The services `name` may call: the caller graph read the other way round."""
    return [service for service in SERVICE_TABLE if name in service.callers]


def callers_of(party: OutsideParty) -> list[Service]:
    """The services that call an outside party (where its key is copied to)."""
    return [service for service in SERVICE_TABLE if party in service.outside]


def users_of(dependency: Dependency) -> list[Service]:
    """The services that need a data-tier dependency (who may reach PgPool, Redis, ...)."""
    return [service for service in SERVICE_TABLE if dependency in service.needs]


def _check_table() -> None:
    names = set(SERVICES)
    for service in SERVICE_TABLE:
        unknown = service.callers - names - {INTERNET}
        if unknown:
            raise ValueError(f"service {service.name}: unknown callers {sorted(unknown)}")
        if service.scaling.min_replicas > service.scaling.max_replicas:
            raise ValueError(f"service {service.name}: min_replicas > max_replicas")
        if Dependency.POSTGRES in service.needs and service.database_connections < 1:
            raise ValueError(f"service {service.name}: database_connections must be >= 1")
        for stream in service.streams:
            if service.route is None or not stream.startswith(f"{service.route}/"):
                raise ValueError(
                    f"service {service.name}: stream {stream!r} is not under /api/<route>"
                )
    if [s.name for s in SERVICE_TABLE if s.is_public] != ["gateway"]:
        raise ValueError("only the gateway may take traffic from outside the cluster")


_check_table()


# The data tier as the services see it: every client reaches PostgreSQL through PgPool-II.
# Each is the component's own (components.postgres, .redis, .memcached).
DATA_ENDPOINTS: dict[Dependency, Endpoint] = {
    Dependency.POSTGRES: postgres.ENDPOINT,
    Dependency.REDIS: redis.ENDPOINT,
    Dependency.MEMCACHED: memcached.ENDPOINT,
}


def namespaces() -> list[str]:
    """Every namespace the platform creates, in a stable order."""
    found = [s.namespace for s in SERVICE_TABLE] + [e.namespace for e in DATA_ENDPOINTS.values()]
    return [*dict.fromkeys(found), MONITORING_NAMESPACE]
