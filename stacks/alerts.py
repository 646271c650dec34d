"""The platform's alerts, with the seed's thresholds, and the metric names they read.

Critical alerts page (PagerDuty, 24/7), warnings go to chat in business hours, info alerts
only show on dashboards. The services' metrics are named by what they export
(`services.kit.exports`); the data tier's exporters export the `pg_*` and `redis_*` ones.
"""

from __future__ import annotations

import re

from components.conf.haproxy import FRONTEND
from components.conf.prometheus import (
    PG_ARCHIVE_FAILED_AT,
    PG_ARCHIVED_AT,
    PG_IN_RECOVERY,
    Alert,
    Recording,
)
from services.kit.exports import (
    CACHE_REQUESTS,
    CARTS_CHECKED_OUT,
    CARTS_STARTED,
    EVENTS_DEAD_LETTERS,
    HTTP_LATENCY,
    HTTP_REQUESTS,
    INVENTORY_UNITS_ON_HAND,
    INVENTORY_UNITS_SOLD,
    ORDER_QUEUE_DEPTH,
    ORDERS_AWAITING_SHIPMENT,
    PAYMENT_ATTEMPTS,
    PAYMENT_BREAKER_STATE,
    PAYMENT_VELOCITY_UNAVAILABLE,
    PRODUCT_SEARCH_SELECTION_POSITION,
    PRODUCT_SEARCHES,
    WAREHOUSE_BREAKER_STATE,
)

# Seed thresholds.
ERROR_RATE_CRITICAL = 0.05
LATENCY_CRITICAL_SECONDS = 5
RESOURCE_WARNING_RATIO = 0.80
CACHE_HIT_WARNING_RATIO = 0.80
DISK_WARNING_RATIO = 0.85


# --- what the alerts measure, over a window: the dashboards draw the same (stacks/dashboards)


def error_ratio(window: str) -> str:
    """Each service's share of requests that failed (5xx)."""
    return (
        f'sum by (service) (rate({HTTP_REQUESTS}{{status=~"5.."}}[{window}]))'
        f" / sum by (service) (rate({HTTP_REQUESTS}[{window}]))"
    )


def latency_quantile(quantile: float, window: str) -> str:
    """Each service's response time at `quantile` (0.95: 95 % of requests were faster)."""
    buckets = f"rate({HTTP_LATENCY}_bucket[{window}])"
    return f"histogram_quantile({quantile}, sum by (service, le) ({buckets}))"


def cache_hit_ratio(window: str, by: str = "service") -> str:
    """The share of cache reads that hit, per `by` (labels of cache_requests_total)."""
    return (
        f'sum by ({by}) (rate({CACHE_REQUESTS}{{result="hit"}}[{window}]))'
        f" / sum by ({by}) (rate({CACHE_REQUESTS}[{window}]))"
    )


def pod_cpu_ratio(window: str) -> str:
    """Each pod's CPU use over its limit (cAdvisor and kube-state-metrics: a cluster's)."""
    used = f'rate(container_cpu_usage_seconds_total{{container!=""}}[{window}])'
    return (
        f"sum by (namespace, pod) ({used})"
        ' / sum by (namespace, pod) (kube_pod_container_resource_limits{resource="cpu"})'
    )


def pod_memory_ratio() -> str:
    """Each pod's working set over its memory limit (a cluster's metrics)."""
    return (
        'sum by (namespace, pod) (container_memory_working_set_bytes{container!=""})'
        ' / sum by (namespace, pod) (kube_pod_container_resource_limits{resource="memory"})'
    )


def volume_used_ratio() -> str:
    """Each persistent volume's used share (the kubelet's metrics)."""
    return "kubelet_volume_stats_used_bytes / kubelet_volume_stats_capacity_bytes"


# What the gateway's HPA scales on: each pod's requests per second, from HAProxy's own
# Prometheus exporter (its metrics frontend), per scrape target.
GATEWAY_RPS = "gateway_requests_per_second"
HAPROXY_REQUESTS = "haproxy_frontend_http_requests_total"
# The seed's business metrics, for the business dashboard:
# - the share of payment attempts a provider accepted (of those sent to it: a call its breaker
#   refused never reached it);
# - the share of shoppers' searches that found nothing, and of the products chosen from search
#   results (clicked or bought, as the storefront reports) that stood in the first three hits;
# - cart abandonment: the share of carts begun in the last hour that no order came from (a
#   cart checked out now may have begun earlier, hence the clamp);
# - inventory turnover: a day's units sold at the last hour's pace, over the units on hand
#   (every inventory pod reports the same total, hence max, not sum).
PAYMENT_SUCCESS_RATIO = "payment_success_ratio"
SEARCH_ZERO_RESULT_RATIO = "search_zero_result_ratio"
SEARCH_TOP3_RATIO = "search_selection_top3_ratio"
CART_ABANDONMENT_RATIO = "cart_abandonment_ratio"
INVENTORY_TURNOVER_DAILY = "inventory_turnover_daily"
# A histogram's `le` label as the Python client writes it (3 -> "3.0").
TOP_THREE = f'le="{float(3)}"'
RECORDINGS: tuple[Recording, ...] = (
    Recording(
        GATEWAY_RPS, f'sum without (proxy) (rate({HAPROXY_REQUESTS}{{proxy="{FRONTEND}"}}[1m]))'
    ),
    Recording(
        PAYMENT_SUCCESS_RATIO,
        f'sum by (provider) (rate({PAYMENT_ATTEMPTS}{{result="success"}}[15m]))'
        f' / sum by (provider) (rate({PAYMENT_ATTEMPTS}{{result!="breaker_open"}}[15m]))',
    ),
    Recording(
        SEARCH_ZERO_RESULT_RATIO,
        f'sum(rate({PRODUCT_SEARCHES}{{result="empty"}}[15m]))'
        f" / sum(rate({PRODUCT_SEARCHES}[15m]))",
    ),
    Recording(
        SEARCH_TOP3_RATIO,
        f"sum by (action) (rate({PRODUCT_SEARCH_SELECTION_POSITION}_bucket{{{TOP_THREE}}}[1h]))"
        f" / sum by (action) (rate({PRODUCT_SEARCH_SELECTION_POSITION}_count[1h]))",
    ),
    Recording(
        CART_ABANDONMENT_RATIO,
        f"clamp(1 - sum(rate({CARTS_CHECKED_OUT}[1h])) / sum(rate({CARTS_STARTED}[1h])), 0, 1)",
    ),
    Recording(
        INVENTORY_TURNOVER_DAILY,
        f"sum(rate({INVENTORY_UNITS_SOLD}[1h])) * 86400"
        f" / max(avg_over_time({INVENTORY_UNITS_ON_HAND}[1h]))",
    ),
)

ALERTS: tuple[Alert, ...] = (
    # --- critical: page someone, day or night -------------------------------------------------
    Alert(
        "DatabasePrimaryDown",
        "critical",
        # Fires when no PostgreSQL member reports itself as a primary (not in recovery), the
        # exporters' extra query (components.conf.prometheus.POSTGRES_QUERIES).
        f"absent({PG_IN_RECOVERY} == 0)",
        "30s",
        "No PostgreSQL primary is up: writes are failing until PgPool-II promotes a replica",
    ),
    Alert(
        "DatabaseFailover",
        "critical",
        # A member changed role in the last 10 minutes: a standby was promoted because the
        # primary failed (PgPool-II fails over in seconds, under DatabasePrimaryDown's hold,
        # but the seed pages on a master failure), or an old primary came back as a standby.
        f"max(changes({PG_IN_RECOVERY}[10m])) > 0",
        "0m",
        "A PostgreSQL member changed role: the primary failed over (or was restored); check "
        "the old primary and the replication before the next failure",
    ),
    Alert(
        "PaymentServiceUnavailable",
        "critical",
        'sum(up{namespace="payments", service="payment"}) < 1 or absent(up{service="payment"})',
        "1m",
        "No payment pod answers: checkouts cannot complete",
    ),
    Alert(
        "HighErrorRate",
        "critical",
        f"{error_ratio('5m')} > {ERROR_RATE_CRITICAL}",
        "2m",
        "More than 5 % of a service's requests fail",
    ),
    Alert(
        "SlowResponses",
        "critical",
        f"{latency_quantile(0.95, '5m')} > {LATENCY_CRITICAL_SECONDS}",
        "5m",
        "A service's 95th percentile response time is above 5 seconds",
    ),
    # --- warning: chat, business hours ----------------------------------------------------------
    Alert(
        "HighCpu",
        "warning",
        f"{pod_cpu_ratio('5m')} > {RESOURCE_WARNING_RATIO}",
        "10m",
        "A pod uses more than 80 % of its CPU limit",
    ),
    Alert(
        "HighMemory",
        "warning",
        f"{pod_memory_ratio()} > {RESOURCE_WARNING_RATIO}",
        "10m",
        "A pod uses more than 80 % of its memory limit",
    ),
    Alert(
        "LowCacheHitRatio",
        "warning",
        f"{cache_hit_ratio('10m')} < {CACHE_HIT_WARNING_RATIO}",
        "15m",
        "A service's cache hit ratio is below 80 %",
    ),
    Alert(
        "DiskFilling",
        "warning",
        f"{volume_used_ratio()} > {DISK_WARNING_RATIO}",
        "10m",
        "A persistent volume is more than 85 % full",
    ),
    Alert(
        "WalArchivingFailing",
        "warning",
        # The primary's last attempt to archive failed and none has succeeded since: the
        # point-in-time recovery window stops growing, and WAL piles up on its volume.
        f"{PG_ARCHIVE_FAILED_AT} > {PG_ARCHIVED_AT}",
        "2m",
        "WAL segments are not reaching the backup repository: point-in-time recovery stops at "
        "the last one that did",
    ),
    Alert(
        "PaymentProviderDown",
        "warning",
        f"max by (provider) ({PAYMENT_BREAKER_STATE}) == 2",
        "5m",
        "A payment provider's circuit breaker has stayed open: checkouts run on the fallback",
    ),
    Alert(
        "FraudVelocityUnchecked",
        "warning",
        f"sum by (outcome) (rate({PAYMENT_VELOCITY_UNAVAILABLE}[5m])) > 0",
        "5m",
        "The fraud velocity window in Redis cannot be read: charges wait (or go unchecked up to "
        "VELOCITY_UNCHECKED_MAX_CENTS)",
    ),
    Alert(
        "WarehouseUnreachable",
        "warning",
        f"max({WAREHOUSE_BREAKER_STATE}) == 2",
        "10m",
        "The warehouse's circuit breaker has stayed open: confirmed orders wait to be shipped",
    ),
    Alert(
        "OrdersAwaitingShipment",
        "warning",
        f"max({ORDERS_AWAITING_SHIPMENT}) > 0",
        "15m",
        "Confirmed orders the warehouse has not taken for 15 minutes (refused, or it is down)",
    ),
    Alert(
        "EventsDeadLettered",
        "warning",
        f"max by (group) ({EVENTS_DEAD_LETTERS}) > 0",
        "15m",
        "A consumer group gave up on events after every re-drive: their orders need a person",
    ),
    Alert(
        "OrderQueueGrowing",
        "warning",
        f"deriv({ORDER_QUEUE_DEPTH}[10m]) > 0 and {ORDER_QUEUE_DEPTH} > 10",
        "15m",
        "Pending orders have kept increasing for 15 minutes",
    ),
    # --- info: dashboards only ----------------------------------------------------------------
    Alert(
        "DeploymentRolledOut",
        "info",
        "changes(kube_deployment_status_observed_generation[10m]) > 0",
        "0m",
        "A deployment completed a rollout",
    ),
    Alert(
        "AutoscalerScaled",
        "info",
        "changes(kube_horizontalpodautoscaler_status_desired_replicas[10m]) > 0",
        "0m",
        "An autoscaler changed a service's replica count",
    ),
    Alert(
        "BackgroundJobFailed",
        "info",
        "kube_job_status_failed > 0",
        "0m",
        "A background job (backup, partition maintenance, bootstrap) failed",
    ),
)

# Metrics only a Kubernetes cluster exports, and where they come from on GKE: the local
# platform cannot have them (tests/stacks/test_alerts.py exercises their rules with synthetic
# series instead). Every other metric a rule reads must exist on the local platform.
CLUSTER_ONLY_METRICS: dict[str, str] = {
    "container_cpu_usage_seconds_total": "cAdvisor, scraped from each kubelet",
    "container_memory_working_set_bytes": "cAdvisor, scraped from each kubelet",
    "kube_pod_container_resource_limits": "kube-state-metrics (kube-prometheus-stack)",
    "kubelet_volume_stats_used_bytes": "the kubelet's own metrics",
    "kubelet_volume_stats_capacity_bytes": "the kubelet's own metrics",
    "kube_deployment_status_observed_generation": "kube-state-metrics",
    "kube_horizontalpodautoscaler_status_desired_replicas": "kube-state-metrics",
    "kube_job_status_failed": "kube-state-metrics",
}

# PromQL's keywords; a function or an aggregation is a name followed by "(".
_PROMQL_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset"})


def metric_names(expr: str) -> set[str]:
    """The metrics a PromQL expression reads (label matchers, ranges, grouping labels,
    functions and numbers left out): what must exist for the rule to mean anything."""
    grouping = r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
    text = re.sub(rf"\{{[^}}]*\}}|\[[^\]]*\]|{grouping}", " ", expr)
    text = re.sub(r'"[^"]*"', " ", text)
    names = set(re.findall(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()", text))
    return {n for n in names - _PROMQL_KEYWORDS if not re.fullmatch(r"[0-9.e+-]+|Inf|NaN", n)}
