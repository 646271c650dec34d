"""The service table: the seed's numbers, and the caller graph the network is built from."""

from __future__ import annotations

import pytest

from components.network_policy import (
    ANYWHERE,
    MONITORING,
    PUBLIC_INTERNET,
    Flow,
    Pods,
)
from stacks.network import service_flows
from stacks.services import (
    DATA_ENDPOINTS,
    INTERNET,
    SERVICE_TABLE,
    SERVICES,
    Dependency,
    callees,
    namespaces,
)

# Seed: replicas, HPA bounds, CPU/memory targets, scale-up and scale-down behaviour.
SEED_SCALING = {
    "product": (5, 20, 65, 75, (50, 15), (10, 60)),
    "order": (3, 15, 70, 80, (100, 15), (10, 300)),
    "payment": (2, 8, 60, 70, (25, 30), (5, 600)),
}
SEED_MIN_REPLICAS = {"user": 3, "product": 5, "order": 3, "payment": 2, "inventory": 4}


@pytest.mark.parametrize("name", sorted(SEED_SCALING))
def test_hpa_numbers_are_the_seeds(name: str) -> None:
    low, high, cpu, memory, up, down = SEED_SCALING[name]
    scaling = SERVICES[name].scaling
    assert (scaling.min_replicas, scaling.max_replicas) == (low, high)
    assert (scaling.cpu_percent, scaling.memory_percent) == (cpu, memory)
    assert (scaling.scale_up.percent, scaling.scale_up.period_seconds) == up
    assert (scaling.scale_down.percent, scaling.scale_down.period_seconds) == down


def test_replica_counts_are_the_seeds() -> None:
    assert {n: SERVICES[n].scaling.min_replicas for n in SEED_MIN_REPLICAS} == SEED_MIN_REPLICAS


def test_custom_metrics_are_the_seeds() -> None:
    metrics = {s.name: s.scaling.custom_metric for s in SERVICE_TABLE if s.scaling.custom_metric}
    assert metrics["product"].name == "product_cache_miss_ratio"
    assert metrics["product"].target == "150m"  # hit ratio above 85 %
    assert (metrics["order"].name, metrics["order"].target, metrics["order"].per_pod) == (
        "order_queue_depth",
        "100",
        False,
    )
    assert (metrics["gateway"].name, metrics["gateway"].target) == (
        "gateway_requests_per_second",
        "1000",
    )


def test_only_the_gateway_takes_traffic_from_outside() -> None:
    assert [s.name for s in SERVICE_TABLE if INTERNET in s.callers] == ["gateway"]


def test_payment_is_isolated() -> None:
    payment = SERVICES["payment"]
    assert payment.callers == {"order"}
    assert payment.namespace not in {s.namespace for s in SERVICE_TABLE if s.name != "payment"}
    assert payment.node_pool == "payments"
    assert payment.route is None  # never reachable through the gateway


def test_callees_read_the_graph_backwards() -> None:
    assert {s.name for s in callees("order")} == {"product", "payment", "inventory"}
    assert {s.name for s in callees("gateway")} == {"user", "product", "order", "inventory"}
    assert callees("payment") == []


def test_every_namespace_is_listed_once() -> None:
    assert namespaces() == ["shop", "payments", "data", "cache", "monitoring"]


def test_only_the_mail_senders_reach_the_mail_relay_on_its_port() -> None:
    user = Pods(SERVICES["user"].namespace, "user")
    outside = {f for f in service_flows(mail_port=2525) if f.dest == PUBLIC_INTERNET}
    assert Flow(user, PUBLIC_INTERNET, (2525,)) in outside
    assert (
        {f.source for f in outside if f.ports == (2525,)}
        == {Pods(s.namespace, s.name) for s in SERVICE_TABLE if s.sends_mail}
        == {user}
    )
    assert not any(f.ports == (2525,) for f in service_flows())  # no relay, no way out


def test_flows_follow_the_caller_graph_and_dependencies() -> None:
    flows = set(service_flows())
    gateway, order, payment = (
        Pods(SERVICES[n].namespace, n) for n in ("gateway", "order", "payment")
    )
    pgpool = Pods(DATA_ENDPOINTS[Dependency.POSTGRES].namespace, "pgpool")
    assert Flow(ANYWHERE, gateway, (8080,)) in flows
    assert Flow(order, payment, (8080,)) in flows
    assert Flow(gateway, payment, (8080,)) not in flows
    assert Flow(payment, PUBLIC_INTERNET, (443,)) in flows
    assert Flow(MONITORING, gateway, (8404,)) in flows
    assert Flow(order, pgpool, (5432,)) in flows
    # Only services that need a backend may reach it.
    memcached = Pods("cache", "memcached")
    assert {f.source for f in flows if f.dest == memcached} == {Pods("shop", "product")}
    # Nothing but the gateway is reachable from outside the cluster.
    assert {f.dest for f in flows if f.source == ANYWHERE} == {gateway}
