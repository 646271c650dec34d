"""The platform's Grafana dashboards: one per tier (edge, services, data, cache) and one for
the business, over the metrics the services export (services.kit.exports), the exporters'
and the recording rules (stacks/alerts.py).

What an alert measures, a dashboard draws with the same expression (stacks.alerts'
`error_ratio`, `latency_quantile`, ...), over Grafana's `$__rate_interval` instead of the
alert's window. Panels over a cluster's own metrics (cAdvisor, kube-state-metrics, the
kubelet: stacks.alerts.CLUSTER_ONLY_METRICS) stay empty on the local platform.
"""

from __future__ import annotations

from components.conf.grafana import RATE_INTERVAL, Dashboard, Panel, Query, Row
from components.conf.haproxy import FRONTEND
from components.conf.prometheus import PG_IN_RECOVERY, PG_REPLAY_LAG
from services.kit.exports import (
    CARTS_CHECKED_OUT,
    CARTS_STARTED,
    DB_POOL_CONNECTIONS,
    DB_POOL_TIMEOUTS,
    DB_POOL_WAIT_SECONDS,
    DB_QUERY_SECONDS,
    EVENTS_DEAD_LETTERS,
    HTTP_REQUESTS,
    INVENTORY_UNITS_ON_HAND,
    INVENTORY_UNITS_SOLD,
    ORDER_QUEUE_DEPTH,
    ORDERS_AWAITING_SHIPMENT,
    PAYMENT_ATTEMPTS,
    PAYMENT_BREAKER_STATE,
    PRODUCT_CACHE_MISS_RATIO,
    RESET_MAILS,
    WAREHOUSE_BREAKER_STATE,
    WAREHOUSE_CALLS,
)
from stacks.alerts import (
    CART_ABANDONMENT_RATIO,
    GATEWAY_RPS,
    INVENTORY_TURNOVER_DAILY,
    PAYMENT_SUCCESS_RATIO,
    SEARCH_TOP3_RATIO,
    SEARCH_ZERO_RESULT_RATIO,
    cache_hit_ratio,
    error_ratio,
    latency_quantile,
    pod_cpu_ratio,
    pod_memory_ratio,
    volume_used_ratio,
)

W = RATE_INTERVAL
TAGS = ("ecommerce-platform",)


def _rate(metric: str, by: str, matchers: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{{{matchers}}}[{W}]))"


def _hit_ratio(hits: str, misses: str, by: str = "pod") -> str:
    return f"{_rate(hits, by)} / ({_rate(hits, by)} + {_rate(misses, by)})"


def _quantile(histogram: str, by: str, quantile: float = 0.95) -> str:
    return f"histogram_quantile({quantile}, sum by ({by}, le) (rate({histogram}_bucket[{W}])))"


EDGE = Dashboard(
    uid="platform-edge",
    title="Edge: the API gateway",
    description="HAProxy at the edge: requests, answers, queues and the rate limit",
    tags=TAGS,
    rows=(
        Row(
            "Traffic",
            (
                Panel(
                    "Requests per second, per gateway pod (what its autoscaler reads)",
                    (Query(f"sum by (pod) ({GATEWAY_RPS})", "{{pod}}"),),
                    unit="reqps",
                ),
                Panel(
                    "Answers by class",
                    (
                        Query(
                            _rate(
                                "haproxy_frontend_http_responses_total",
                                "code",
                                f'proxy="{FRONTEND}"',
                            ),
                            "{{code}}",
                        ),
                    ),
                    unit="reqps",
                ),
            ),
        ),
        Row(
            "Backends (one per service)",
            (
                Panel(
                    "Answers per service",
                    (Query(_rate("haproxy_backend_http_responses_total", "proxy"), "{{proxy}}"),),
                    unit="reqps",
                ),
                Panel(
                    "Average response time per service (HAProxy's last 1024 requests)",
                    (
                        Query(
                            "max by (proxy) (haproxy_backend_response_time_average_seconds)",
                            "{{proxy}}",
                        ),
                    ),
                    unit="s",
                ),
                Panel(
                    "Requests queued for a free server slot",
                    (Query("sum by (proxy) (haproxy_backend_current_queue)", "{{proxy}}"),),
                    description="Each service pod takes 64 requests at once; more wait here",
                ),
                Panel(
                    "Servers up per service",
                    (Query("sum by (proxy) (haproxy_backend_active_servers)", "{{proxy}}"),),
                ),
            ),
        ),
    ),
)

SERVICES = Dashboard(
    uid="platform-services",
    title="Services: requests, errors, latency, pools",
    description="The five services: what they answer, how fast, and what they wait on",
    tags=TAGS,
    rows=(
        Row(
            "Golden signals",
            (
                Panel(
                    "Requests per second",
                    (Query(_rate(HTTP_REQUESTS, "service"), "{{service}}"),),
                    unit="reqps",
                ),
                Panel(
                    "Share of requests failing (5xx); pages above 5 %",
                    (Query(error_ratio(W), "{{service}}"),),
                    unit="percentunit",
                ),
                Panel(
                    "95th percentile response time; pages above 5 s",
                    (Query(latency_quantile(0.95, W), "{{service}}"),),
                    unit="s",
                ),
                Panel(
                    "99th percentile response time",
                    (Query(latency_quantile(0.99, W), "{{service}}"),),
                    unit="s",
                ),
            ),
        ),
        Row(
            "Database and cache, as the services see them",
            (
                Panel(
                    "95th percentile wait for a pooled connection",
                    (
                        Query(
                            _quantile(DB_POOL_WAIT_SECONDS, "service, pool"), "{{service}} {{pool}}"
                        ),
                    ),
                    unit="s",
                ),
                Panel(
                    "Connection waits given up (503 database_busy)",
                    (Query(_rate(DB_POOL_TIMEOUTS, "service, pool"), "{{service}} {{pool}}"),),
                    unit="reqps",
                ),
                Panel(
                    "Pooled connections in use",
                    (
                        Query(
                            f'sum by (service, pool) ({DB_POOL_CONNECTIONS}{{state="in_use"}})',
                            "{{service}} {{pool}}",
                        ),
                    ),
                ),
                Panel(
                    "95th percentile statement time",
                    (Query(_quantile(DB_QUERY_SECONDS, "service, kind"), "{{service}} {{kind}}"),),
                    unit="s",
                ),
                Panel(
                    "Cache hit ratio; warns below 80 %",
                    (Query(cache_hit_ratio(W), "{{service}}"),),
                    unit="percentunit",
                ),
                Panel(
                    "Catalog reads that reached the database (the product autoscaler's metric)",
                    (Query(f"max by (pod) ({PRODUCT_CACHE_MISS_RATIO})", "{{pod}}"),),
                    unit="percentunit",
                ),
            ),
        ),
        Row(
            "Workers and outside parties",
            (
                Panel(
                    "Orders in the checkout saga (the order autoscaler's metric)",
                    (
                        Query(f"max({ORDER_QUEUE_DEPTH})", "in the saga"),
                        Query(f"max({ORDERS_AWAITING_SHIPMENT})", "awaiting the warehouse"),
                    ),
                ),
                Panel(
                    "Events given up on, per consumer group",
                    (Query(f"max by (group) ({EVENTS_DEAD_LETTERS})", "{{group}}"),),
                ),
                Panel(
                    "Calls to the warehouse and the payment providers",
                    (
                        Query(_rate(WAREHOUSE_CALLS, "result"), "warehouse {{result}}"),
                        Query(
                            _rate(PAYMENT_ATTEMPTS, "provider, result"), "{{provider}} {{result}}"
                        ),
                    ),
                    unit="reqps",
                ),
                Panel(
                    "Circuit breakers (0 closed, 1 half-open, 2 open)",
                    (
                        Query(f"max({WAREHOUSE_BREAKER_STATE})", "warehouse"),
                        Query(f"max by (provider) ({PAYMENT_BREAKER_STATE})", "{{provider}}"),
                    ),
                ),
                Panel(
                    "Password-reset e-mails",
                    (Query(_rate(RESET_MAILS, "result"), "{{result}}"),),
                    unit="reqps",
                ),
            ),
        ),
        Row(
            "Pods (a cluster's metrics)",
            (
                Panel(
                    "CPU used of the limit; warns above 80 %",
                    (Query(pod_cpu_ratio(W), "{{namespace}}/{{pod}}"),),
                    unit="percentunit",
                ),
                Panel(
                    "Memory used of the limit; warns above 80 %",
                    (Query(pod_memory_ratio(), "{{namespace}}/{{pod}}"),),
                    unit="percentunit",
                ),
            ),
        ),
    ),
)

DATA = Dashboard(
    uid="platform-data",
    title="Data: PostgreSQL primary and replicas",
    description="Each PostgreSQL member (its exporter sidecar): role, lag, load, volume",
    tags=TAGS,
    rows=(
        Row(
            "Members",
            (
                Panel(
                    "Up (1) per member",
                    (Query("max by (pod) (pg_up)", "{{pod}}"),),
                    kind="stat",
                    width=8,
                ),
                Panel(
                    "Role (0 primary, 1 standby): one 0 at all times",
                    (Query(f"max by (pod) ({PG_IN_RECOVERY})", "{{pod}}"),),
                    kind="stat",
                    width=8,
                ),
                Panel(
                    "Standby replay behind what it received",
                    (Query(f"max by (pod) ({PG_REPLAY_LAG})", "{{pod}}"),),
                    unit="s",
                    width=8,
                ),
            ),
        ),
        Row(
            "Load",
            (
                Panel(
                    "Transactions committed and rolled back per second",
                    (
                        Query(_rate("pg_stat_database_xact_commit", "pod"), "{{pod}} commits"),
                        Query(_rate("pg_stat_database_xact_rollback", "pod"), "{{pod}} rollbacks"),
                    ),
                    unit="ops",
                ),
                Panel(
                    "Connections per member (PgPool-II's children and the exporters)",
                    (Query("sum by (pod) (pg_stat_database_numbackends)", "{{pod}}"),),
                ),
                Panel(
                    "Buffer cache hit ratio",
                    (
                        Query(
                            _hit_ratio("pg_stat_database_blks_hit", "pg_stat_database_blks_read"),
                            "{{pod}}",
                        ),
                    ),
                    unit="percentunit",
                ),
                Panel(
                    "Deadlocks per second",
                    (Query(_rate("pg_stat_database_deadlocks", "pod"), "{{pod}}"),),
                    unit="ops",
                ),
            ),
        ),
        Row(
            "Storage",
            (
                Panel(
                    "Database size",
                    (
                        Query(
                            "max by (pod, datname) (pg_database_size_bytes)", "{{pod}} {{datname}}"
                        ),
                    ),
                    unit="bytes",
                ),
                Panel(
                    "Volumes used (a cluster's metrics); warns above 85 %",
                    (Query(volume_used_ratio(), "{{namespace}}/{{persistentvolumeclaim}}"),),
                    unit="percentunit",
                ),
            ),
        ),
    ),
)

CACHE = Dashboard(
    uid="platform-cache",
    title="Cache: Redis cluster and the services' layers",
    description="The Redis cluster's nodes (their exporter sidecars) and each cache layer's hits",
    tags=TAGS,
    rows=(
        Row(
            "The services' cache layers (l1 in-process, l2 Redis, l3 Memcached)",
            (
                Panel(
                    "Hit ratio per service and layer",
                    (Query(cache_hit_ratio(W, by="service, layer"), "{{service}} {{layer}}"),),
                    unit="percentunit",
                    width=24,
                ),
            ),
        ),
        Row(
            "Redis nodes",
            (
                Panel(
                    "Up (1) per node",
                    (Query("max by (pod) (redis_up)", "{{pod}}"),),
                    kind="stat",
                ),
                Panel(
                    "Commands per second",
                    (Query(_rate("redis_commands_processed_total", "pod"), "{{pod}}"),),
                    unit="ops",
                ),
                Panel(
                    "Memory used",
                    (Query("max by (pod) (redis_memory_used_bytes)", "{{pod}}"),),
                    unit="bytes",
                ),
                Panel(
                    "Keyspace hit ratio",
                    (
                        Query(
                            _hit_ratio("redis_keyspace_hits_total", "redis_keyspace_misses_total"),
                            "{{pod}}",
                        ),
                    ),
                    unit="percentunit",
                ),
                Panel(
                    "Connected clients",
                    (Query("max by (pod) (redis_connected_clients)", "{{pod}}"),),
                ),
                Panel(
                    "Keys evicted or expired per second",
                    (
                        Query(_rate("redis_evicted_keys_total", "pod"), "{{pod}} evicted"),
                        Query(_rate("redis_expired_keys_total", "pod"), "{{pod}} expired"),
                    ),
                    unit="ops",
                ),
            ),
        ),
    ),
)

BUSINESS = Dashboard(
    uid="platform-business",
    title="Business: checkout, search, payments, stock",
    description="The seed's business metrics, from the services' counters and recording rules",
    tags=TAGS,
    rows=(
        Row(
            "Checkout",
            (
                Panel(
                    "Cart abandonment (of carts begun in the last hour)",
                    (Query(CART_ABANDONMENT_RATIO, "abandoned"),),
                    unit="percentunit",
                    kind="stat",
                    width=8,
                ),
                Panel(
                    "Carts begun and checked out, per hour",
                    (
                        Query(f"sum(increase({CARTS_STARTED}[1h]))", "begun"),
                        Query(f"sum(increase({CARTS_CHECKED_OUT}[1h]))", "checked out"),
                    ),
                    width=16,
                ),
            ),
        ),
        Row(
            "Payments",
            (
                Panel(
                    "Payment success rate per provider (attempts it was sent)",
                    (Query(PAYMENT_SUCCESS_RATIO, "{{provider}}"),),
                    unit="percentunit",
                ),
                Panel(
                    "Payment attempts per provider and result",
                    (
                        Query(
                            _rate(PAYMENT_ATTEMPTS, "provider, result"), "{{provider}} {{result}}"
                        ),
                    ),
                    unit="reqps",
                ),
            ),
        ),
        Row(
            "Search relevance",
            (
                Panel(
                    "Searches that found nothing",
                    (Query(SEARCH_ZERO_RESULT_RATIO, "zero results"),),
                    unit="percentunit",
                ),
                Panel(
                    "Chosen hits that stood in the first three",
                    (Query(SEARCH_TOP3_RATIO, "{{action}}"),),
                    unit="percentunit",
                ),
            ),
        ),
        Row(
            "Stock",
            (
                Panel(
                    "Inventory turnover (a day's sales at the last hour's pace / units on hand)",
                    (Query(INVENTORY_TURNOVER_DAILY, "turns a day"),),
                ),
                Panel(
                    "Units sold per hour and units on hand",
                    (
                        Query(f"sum(increase({INVENTORY_UNITS_SOLD}[1h]))", "sold in the hour"),
                        Query(f"max({INVENTORY_UNITS_ON_HAND})", "on hand"),
                    ),
                ),
            ),
        ),
    ),
)

DASHBOARDS: tuple[Dashboard, ...] = (EDGE, SERVICES, DATA, CACHE, BUSINESS)
