"""The Prometheus metrics every service exports, in a registry of its own.

Names are the contract with the alerts and dashboards (`services.kit.exports`). One `Metrics`
object per app (held under `app.METRICS`): the HTTP middleware records requests, and the
database and cache code record into the same object's metrics, always labelled with the
service name:

    metrics.cache_requests.labels(service=name, layer="l2", result="hit").inc()
    metrics.db_query_seconds.labels(service=name, kind="read").observe(seconds)
    metrics.db_pool_wait_seconds.labels(service=name, pool="primary").observe(seconds)
    metrics.db_pool_connections.labels(service=name, pool="primary", state="idle").set(n)

A registry per app (not the process-wide default) lets tests build several apps in one
process; services add their own metrics to `metrics.registry`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from services.kit.exports import (
    CACHE_REQUESTS,
    DB_POOL_CONNECTIONS,
    DB_POOL_TIMEOUTS,
    DB_POOL_WAIT_SECONDS,
    DB_QUERY_SECONDS,
    EVENTS_DEAD_LETTERS,
    HTTP_LATENCY,
    HTTP_REQUESTS,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST

# 1 ms .. 10 s; 5 s is a boundary because the SlowResponses alert fires at p95 > 5 s.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Queries: down to 0.5 ms (an indexed read on a local replica).
QUERY_BUCKETS = (0.0005, *REQUEST_BUCKETS)

# Methods outside this set are counted as "other": a client cannot mint label values.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    def __init__(
        self, service: str, registry: CollectorRegistry | None = None, *, process: bool = True
    ) -> None:
        self.service = service
        self.registry = registry or CollectorRegistry()
        if process:  # CPU, memory, file descriptors, GC of this process
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self.http_requests = Counter(
            HTTP_REQUESTS,
            "HTTP requests answered, by route template and status",
            ["service", "route", "method", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            HTTP_LATENCY,
            "Time to answer an HTTP request, by route template",
            ["service", "route"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.cache_requests = Counter(
            CACHE_REQUESTS,
            "Cache lookups by layer (l1 in-process, l2 Redis, l3 Memcached) and result",
            ["service", "layer", "result"],
            registry=self.registry,
        )
        self.db_query_seconds = Histogram(
            DB_QUERY_SECONDS,
            "Time a statement or transaction holds its connection, by kind (read or write)",
            ["service", "kind"],
            buckets=QUERY_BUCKETS,
            registry=self.registry,
        )
        self.db_pool_wait_seconds = Histogram(
            DB_POOL_WAIT_SECONDS,
            "Time waiting for a pooled database connection, by pool",
            ["service", "pool"],
            buckets=QUERY_BUCKETS,
            registry=self.registry,
        )
        self.db_pool_timeouts = Counter(
            DB_POOL_TIMEOUTS,
            "Requests for a pooled database connection that gave up (answered 503 database_busy)",
            ["service", "pool"],
            registry=self.registry,
        )
        self.db_pool_connections = Gauge(
            DB_POOL_CONNECTIONS,
            "Database pool connections by pool (primary or replica) and state",
            ["service", "pool", "state"],
            registry=self.registry,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "other"
        self.http_requests.labels(self.service, route, method, str(status)).inc()
        self.http_latency.labels(self.service, route).observe(seconds)

    def exposition(self) -> bytes:
        """The Prometheus text format of everything in the registry."""
        return generate_latest(self.registry)


class _Group(Protocol):
    group: str
    dead_letters: int


def watch_dead_letters(metrics: Metrics, consumers: Iterable[_Group]) -> None:
    """The consumer groups' dead letters as the alerts' gauge (one per registry)."""
    gauge = Gauge(
        EVENTS_DEAD_LETTERS,
        "Events a consumer group gave up on, even after re-drives",
        ["group"],
        registry=metrics.registry,
    )
    for consumer in consumers:
        gauge.labels(consumer.group).set_function(lambda c=consumer: c.dead_letters)
