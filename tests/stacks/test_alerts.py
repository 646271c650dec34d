"""The alerts and recording rules, run by Prometheus's own `promtool`: the rendered files are
valid, and every alert fires at its threshold after its `for`, stays silent just below it, and
resolves. Metrics only a cluster has (cAdvisor, kube-state-metrics, the kubelet) are synthetic
series here, as are the services' own: what the rules do with them is what is proven."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.conf.prometheus import (
    Receivers,
    ScrapeJob,
    alertmanager_config,
    pagerduty_and_slack,
    prometheus_config,
    rules_file,
    webhooks,
)
from services.kit.exports import (
    CARTS_CHECKED_OUT,
    CARTS_STARTED,
    INVENTORY_UNITS_ON_HAND,
    INVENTORY_UNITS_SOLD,
    PAYMENT_ATTEMPTS,
    PRODUCT_SEARCH_SELECTION_POSITION,
    PRODUCT_SEARCHES,
)
from stacks.alerts import (
    ALERTS,
    CART_ABANDONMENT_RATIO,
    GATEWAY_RPS,
    HAPROXY_REQUESTS,
    INVENTORY_TURNOVER_DAILY,
    PAYMENT_SUCCESS_RATIO,
    RECORDINGS,
    SEARCH_TOP3_RATIO,
    SEARCH_ZERO_RESULT_RATIO,
    metric_names,
)

PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is missing: `make system-packages` installs prometheus"
)
SUMMARY = {alert.name: alert.summary for alert in ALERTS}
SEVERITY = {alert.name: alert.severity for alert in ALERTS}


@dataclass(frozen=True)
class Proof:
    """An alert's evidence: `firing` series (1-minute steps, promtool's notation) make it fire
    with `labels` at `fires_at` and stop by `resolved_at`; `quiet` series, just below its
    threshold, keep it silent at `fires_at`."""

    firing: dict[str, str]
    labels: dict[str, str]
    fires_at: str
    resolved_at: str
    quiet: dict[str, str]


PROOFS: dict[str, Proof] = {
    "DatabasePrimaryDown": Proof(
        # The primary stops being one at 5 m; a standby is promoted at 10 m.
        firing={
            'pg_recovery_in_recovery{instance="pg-0"}': "0x4 1x25",
            'pg_recovery_in_recovery{instance="pg-1"}': "1x9 0x20",
        },
        labels={},
        fires_at="7m",
        resolved_at="12m",
        quiet={
            'pg_recovery_in_recovery{instance="pg-0"}': "0x20",
            'pg_recovery_in_recovery{instance="pg-1"}': "1x20",
        },
    ),
    # pg-1 is promoted at 5 m: a page at once, quiet again once 10 minutes hold no change.
    "DatabaseFailover": Proof(
        firing={
            'pg_recovery_in_recovery{instance="pg-0"}': "0x4 _x25",
            'pg_recovery_in_recovery{instance="pg-1"}': "1x4 0x25",
        },
        labels={},
        fires_at="6m",
        resolved_at="16m",
        quiet={
            'pg_recovery_in_recovery{instance="pg-0"}': "0x20",
            'pg_recovery_in_recovery{instance="pg-1"}': "1x20",
        },
    ),
    "PaymentServiceUnavailable": Proof(
        firing={'up{namespace="payments", service="payment", pod="p-0"}': "1x5 0x10 1x10"},
        labels={},
        fires_at="8m",
        resolved_at="18m",
        # One pod of two down: the service still answers.
        quiet={
            'up{namespace="payments", service="payment", pod="p-0"}': "1x20",
            'up{namespace="payments", service="payment", pod="p-1"}': "0x20",
        },
    ),
    "HighErrorRate": Proof(
        # 6 % of the order service's requests fail until 15 m.
        firing={
            'http_requests_total{service="order", status="500"}': "0+6x15 90x15",
            'http_requests_total{service="order", status="200"}': "0+94x30",
        },
        labels={"service": "order"},
        fires_at="10m",
        resolved_at="25m",
        quiet={  # 4.9 %
            'http_requests_total{service="order", status="500"}': "0+49x30",
            'http_requests_total{service="order", status="200"}': "0+951x30",
        },
    ),
    "SlowResponses": Proof(
        # Every request takes 5-10 s until 20 m, then under 1 s.
        firing={
            'http_request_duration_seconds_bucket{service="product", le="1"}': "0x20 0+100x20",
            'http_request_duration_seconds_bucket{service="product", le="5"}': "0x20 0+100x20",
            'http_request_duration_seconds_bucket{service="product", le="10"}': "0+100x40",
            'http_request_duration_seconds_bucket{service="product", le="+Inf"}': "0+100x40",
        },
        labels={"service": "product"},
        fires_at="15m",
        resolved_at="30m",
        quiet={  # 1-5 s each: the 95th percentile is 4.8 s
            'http_request_duration_seconds_bucket{service="product", le="1"}': "0x40",
            'http_request_duration_seconds_bucket{service="product", le="5"}': "0+100x40",
            'http_request_duration_seconds_bucket{service="product", le="10"}': "0+100x40",
            'http_request_duration_seconds_bucket{service="product", le="+Inf"}': "0+100x40",
        },
    ),
    "HighCpu": Proof(
        # 0.85 of a 1-core limit until 20 m, then 0.1.
        firing={
            'container_cpu_usage_seconds_total{namespace="shop", pod="p", container="app"}': (
                "0+51x20 1020+6x20"
            ),
            'kube_pod_container_resource_limits{namespace="shop", pod="p", resource="cpu"}': (
                "1x40"
            ),
        },
        labels={"namespace": "shop", "pod": "p"},
        fires_at="17m",
        resolved_at="27m",
        quiet={  # 0.78
            'container_cpu_usage_seconds_total{namespace="shop", pod="p", container="app"}': (
                "0+47x40"
            ),
            'kube_pod_container_resource_limits{namespace="shop", pod="p", resource="cpu"}': (
                "1x40"
            ),
        },
    ),
    "HighMemory": Proof(
        firing={
            'container_memory_working_set_bytes{namespace="shop", pod="p", container="app"}': (
                "850x15 100x10"
            ),
            'kube_pod_container_resource_limits{namespace="shop", pod="p", resource="memory"}': (
                "1000x25"
            ),
        },
        labels={"namespace": "shop", "pod": "p"},
        fires_at="12m",
        resolved_at="17m",
        quiet={
            'container_memory_working_set_bytes{namespace="shop", pod="p", container="app"}': (
                "790x25"
            ),
            'kube_pod_container_resource_limits{namespace="shop", pod="p", resource="memory"}': (
                "1000x25"
            ),
        },
    ),
    "LowCacheHitRatio": Proof(
        # 70 % hits until 30 m, then no misses.
        firing={
            'cache_requests_total{service="product", layer="l2", result="hit"}': "0+70x60",
            'cache_requests_total{service="product", layer="l2", result="miss"}': (
                "0+30x30 900x30"
            ),
        },
        labels={"service": "product"},
        fires_at="27m",
        resolved_at="42m",
        quiet={  # 81 %
            'cache_requests_total{service="product", layer="l2", result="hit"}': "0+81x60",
            'cache_requests_total{service="product", layer="l2", result="miss"}': "0+19x60",
        },
    ),
    "DiskFilling": Proof(
        firing={
            'kubelet_volume_stats_used_bytes{namespace="data", persistentvolumeclaim="d"}': (
                "90x15 50x10"
            ),
            'kubelet_volume_stats_capacity_bytes{namespace="data", persistentvolumeclaim="d"}': (
                "100x25"
            ),
        },
        labels={"namespace": "data", "persistentvolumeclaim": "d"},
        fires_at="12m",
        resolved_at="17m",
        quiet={
            'kubelet_volume_stats_used_bytes{namespace="data", persistentvolumeclaim="d"}': (
                "84x25"
            ),
            'kubelet_volume_stats_capacity_bytes{namespace="data", persistentvolumeclaim="d"}': (
                "100x25"
            ),
        },
    ),
    # Archiving fails from minute 3 (the last success at 100 s) until it succeeds at minute 8.
    "WalArchivingFailing": Proof(
        firing={
            'pg_archiver_last_archived_time{pod="pg-0"}': "100x7 500x10",
            'pg_archiver_last_failed_time{pod="pg-0"}': "0x2 200x15",
        },
        labels={"pod": "pg-0"},
        fires_at="6m",
        resolved_at="10m",
        # An old failure, archived since.
        quiet={
            'pg_archiver_last_archived_time{pod="pg-0"}': "100x20",
            'pg_archiver_last_failed_time{pod="pg-0"}': "50x20",
        },
    ),
    "PaymentProviderDown": Proof(
        firing={'payment_breaker_state{provider="stripe", pod="a"}': "2x10 0x10"},
        labels={"provider": "stripe"},
        fires_at="7m",
        resolved_at="12m",
        quiet={'payment_breaker_state{provider="stripe", pod="a"}': "1x20"},  # half-open
    ),
    "FraudVelocityUnchecked": Proof(
        firing={'payment_fraud_velocity_unavailable_total{outcome="deferred"}': "0+1x10 10x20"},
        labels={"outcome": "deferred"},
        fires_at="8m",
        resolved_at="17m",
        quiet={'payment_fraud_velocity_unavailable_total{outcome="deferred"}': "0x20"},
    ),
    "WarehouseUnreachable": Proof(
        firing={'warehouse_breaker_state{pod="o"}': "2x15 0x10"},
        labels={},
        fires_at="12m",
        resolved_at="17m",
        quiet={'warehouse_breaker_state{pod="o"}': "1x25"},
    ),
    "OrdersAwaitingShipment": Proof(
        firing={'orders_awaiting_shipment{pod="o"}': "3x20 0x10"},
        labels={},
        fires_at="17m",
        resolved_at="22m",
        quiet={'orders_awaiting_shipment{pod="o"}': "0x30"},
    ),
    "EventsDeadLettered": Proof(
        firing={'events_dead_letters{group="fulfilment", pod="o"}': "1x20 0x10"},
        labels={"group": "fulfilment"},
        fires_at="17m",
        resolved_at="22m",
        quiet={'events_dead_letters{group="fulfilment", pod="o"}': "0x30"},
    ),
    "OrderQueueGrowing": Proof(
        # Growing by one a minute from 20 until 40 m, then steady.
        firing={'order_queue_depth{pod="o"}': "20+1x40 60x20"},
        labels={"pod": "o"},
        fires_at="20m",
        resolved_at="55m",
        quiet={'order_queue_depth{pod="o"}': "5+0.1x40"},  # growing, but never above 10
    ),
    "DeploymentRolledOut": Proof(
        firing={'kube_deployment_status_observed_generation{deployment="product"}': "1x5 2x20"},
        labels={"deployment": "product"},
        fires_at="6m",
        resolved_at="17m",
        quiet={'kube_deployment_status_observed_generation{deployment="product"}': "1x25"},
    ),
    "AutoscalerScaled": Proof(
        firing={
            'kube_horizontalpodautoscaler_status_desired_replicas{horizontalpodautoscaler="p"}': (
                "5x5 6x20"
            )
        },
        labels={"horizontalpodautoscaler": "p"},
        fires_at="6m",
        resolved_at="17m",
        quiet={
            'kube_horizontalpodautoscaler_status_desired_replicas{horizontalpodautoscaler="p"}': (
                "5x25"
            )
        },
    ),
    "BackgroundJobFailed": Proof(
        firing={'kube_job_status_failed{job_name="partitions"}': "0x5 1x5 0x10"},
        labels={"job_name": "partitions"},
        fires_at="7m",
        resolved_at="12m",
        quiet={'kube_job_status_failed{job_name="partitions"}': "0x20"},
    ),
}


def series(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"series": name, "values": notation} for name, notation in values.items()]


def alert_tests(name: str, proof: Proof) -> list[dict[str, Any]]:
    expected = {
        "exp_labels": {**proof.labels, "severity": SEVERITY[name]},
        "exp_annotations": {"summary": SUMMARY[name]},
    }
    return [
        {
            "name": f"{name} fires, then resolves",
            "interval": "1m",
            "input_series": series(proof.firing),
            "alert_rule_test": [
                {"eval_time": proof.fires_at, "alertname": name, "exp_alerts": [expected]},
                {"eval_time": proof.resolved_at, "alertname": name, "exp_alerts": []},
            ],
        },
        {
            "name": f"{name} stays silent just below its threshold",
            "interval": "1m",
            "input_series": series(proof.quiet),
            "alert_rule_test": [
                {"eval_time": proof.fires_at, "alertname": name, "exp_alerts": []},
            ],
        },
    ]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(rules_file(ALERTS, RECORDINGS))
    return path


def test_every_alert_has_its_proof() -> None:
    assert set(PROOFS) == {alert.name for alert in ALERTS}


@needs_promtool
def test_the_rendered_rules_pass_promtool_check(rules: Path) -> None:
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERTS) + len(RECORDINGS)} rules found" in checked.stdout


@needs_promtool
def test_every_alert_fires_at_its_threshold_stays_silent_below_and_resolves(
    rules: Path, tmp_path: Path
) -> None:
    tests = [t for name, proof in PROOFS.items() for t in alert_tests(name, proof)]
    unit = tmp_path / "alerts.test.yaml"
    unit.write_text(
        yaml.safe_dump(
            {"rule_files": [rules.name], "evaluation_interval": "15s", "tests": tests},
            sort_keys=False,
        )
    )
    ran = promtool("test", "rules", str(unit))
    assert ran.returncode == 0, ran.stdout + ran.stderr


@needs_promtool
def test_a_wrong_proof_fails_so_the_proofs_are_checked(rules: Path, tmp_path: Path) -> None:
    """The harness can fail: the payment alert's firing series, judged as if quiet."""
    proof = PROOFS["PaymentServiceUnavailable"]
    wrong = Proof(proof.firing, proof.labels, proof.fires_at, proof.resolved_at, proof.firing)
    unit = tmp_path / "wrong.test.yaml"
    unit.write_text(
        yaml.safe_dump(
            {
                "rule_files": [rules.name],
                "evaluation_interval": "15s",
                "tests": alert_tests("PaymentServiceUnavailable", wrong),
            }
        )
    )
    ran = promtool("test", "rules", str(unit))
    assert ran.returncode != 0 and "PaymentServiceUnavailable" in ran.stdout + ran.stderr


# Each recording rule's evidence: input series (1-minute steps), and what it records at 70 m
# (past the longest window, an hour: a rate over a window only partly filled reads low).
RECORDING_PROOFS: dict[str, tuple[dict[str, str], list[dict[str, Any]]]] = {
    # 600 gateway requests a minute: 10 per second; the stats frontend's are not the gateway's.
    GATEWAY_RPS: (
        {
            f'{HAPROXY_REQUESTS}{{proxy="gateway", pod="g-0"}}': "0+600x80",
            f'{HAPROXY_REQUESTS}{{proxy="stats", pod="g-0"}}': "0+6000x80",
        },
        [{"labels": f'{GATEWAY_RPS}{{pod="g-0"}}', "value": 10}],
    ),
    # Stripe: 3 accepted of 4 sent (a decline counts as sent); the breaker's refusals were
    # never sent. PayPal: all it was sent succeeded.
    PAYMENT_SUCCESS_RATIO: (
        {
            f'{PAYMENT_ATTEMPTS}{{provider="stripe", result="success"}}': "0+180x80",
            f'{PAYMENT_ATTEMPTS}{{provider="stripe", result="declined"}}': "0+40x80",
            f'{PAYMENT_ATTEMPTS}{{provider="stripe", result="error"}}': "0+20x80",
            f'{PAYMENT_ATTEMPTS}{{provider="stripe", result="breaker_open"}}': "0+50x80",
            f'{PAYMENT_ATTEMPTS}{{provider="paypal", result="success"}}': "0+10x80",
        },
        [
            {"labels": f'{PAYMENT_SUCCESS_RATIO}{{provider="stripe"}}', "value": 0.75},
            {"labels": f'{PAYMENT_SUCCESS_RATIO}{{provider="paypal"}}', "value": 1},
        ],
    ),
    # One search in four found nothing, over two product processes.
    SEARCH_ZERO_RESULT_RATIO: (
        {
            f'{PRODUCT_SEARCHES}{{pod="product-0", result="empty"}}': "0+1x80",
            f'{PRODUCT_SEARCHES}{{pod="product-0", result="found"}}': "0+2x80",
            f'{PRODUCT_SEARCHES}{{pod="product-1", result="found"}}': "0+1x80",
        },
        [{"labels": SEARCH_ZERO_RESULT_RATIO, "value": 0.25}],
    ),
    # Of 4 clicks a minute, 3 were on a top-three hit (the fourth on the 7th); the one purchase
    # a minute was of the first hit.
    SEARCH_TOP3_RATIO: (
        {
            **{
                f'{PRODUCT_SEARCH_SELECTION_POSITION}_bucket{{action="click", le="{le}"}}': growth
                for le, growth in (("1.0", "0+2x80"), ("3.0", "0+3x80"), ("10.0", "0+4x80"))
            },
            f'{PRODUCT_SEARCH_SELECTION_POSITION}_bucket{{action="click", le="+Inf"}}': "0+4x80",
            f'{PRODUCT_SEARCH_SELECTION_POSITION}_count{{action="click"}}': "0+4x80",
            f'{PRODUCT_SEARCH_SELECTION_POSITION}_bucket{{action="purchase", le="1.0"}}': "0+1x80",
            f'{PRODUCT_SEARCH_SELECTION_POSITION}_bucket{{action="purchase", le="3.0"}}': "0+1x80",
            f'{PRODUCT_SEARCH_SELECTION_POSITION}_count{{action="purchase"}}': "0+1x80",
        },
        [
            {"labels": f'{SEARCH_TOP3_RATIO}{{action="click"}}', "value": 0.75},
            {"labels": f'{SEARCH_TOP3_RATIO}{{action="purchase"}}', "value": 1},
        ],
    ),
    # 10 carts begun a minute over two order processes, 3 checked out: 70 % abandoned.
    CART_ABANDONMENT_RATIO: (
        {
            f'{CARTS_STARTED}{{pod="order-0"}}': "0+6x80",
            f'{CARTS_STARTED}{{pod="order-1"}}': "0+4x80",
            f'{CARTS_CHECKED_OUT}{{pod="order-1"}}': "0+3x80",
        },
        [{"labels": CART_ABANDONMENT_RATIO, "value": 0.7}],
    ),
    # 6 units sold a minute (8,640 a day) with 864 on hand, which both pods report: 10 turns
    # a day (a sum of the pods' reports would halve it).
    INVENTORY_TURNOVER_DAILY: (
        {
            f'{INVENTORY_UNITS_SOLD}{{pod="inventory-0"}}': "0+4x80",
            f'{INVENTORY_UNITS_SOLD}{{pod="inventory-1"}}': "0+2x80",
            f'{INVENTORY_UNITS_ON_HAND}{{pod="inventory-0"}}': "864x80",
            f'{INVENTORY_UNITS_ON_HAND}{{pod="inventory-1"}}': "864x80",
        },
        [{"labels": INVENTORY_TURNOVER_DAILY, "value": 10}],
    ),
}


def test_every_recording_has_its_proof() -> None:
    assert set(RECORDING_PROOFS) == {r.name for r in RECORDINGS}


@needs_promtool
@pytest.mark.parametrize("name", sorted(RECORDING_PROOFS))
def test_each_recording_rule_records_what_it_says(name: str, rules: Path, tmp_path: Path) -> None:
    inputs, expected = RECORDING_PROOFS[name]
    unit = tmp_path / "recordings.test.yaml"
    unit.write_text(
        yaml.safe_dump(
            {
                "rule_files": [rules.name],
                "evaluation_interval": "15s",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": series(inputs),
                        # Rounded: a sum's float result depends on the order it added in.
                        "promql_expr_test": [
                            {
                                "expr": f"round({name}, 0.001)",
                                "eval_time": "70m",
                                "exp_samples": [
                                    {**e, "labels": e["labels"].removeprefix(name) or "{}"}
                                    for e in expected
                                ],
                            }
                        ],
                    }
                ],
            },
            sort_keys=False,
        )
    )
    ran = promtool("test", "rules", str(unit))
    assert ran.returncode == 0, ran.stdout + ran.stderr


@pytest.mark.skipif(AMTOOL is None, reason="amtool is missing: it comes with alertmanager")
@pytest.mark.parametrize(
    "receivers",
    [
        pagerduty_and_slack("routing-key", "https://hooks.slack.com/services/T/B/X", "#shop"),
        webhooks("http://127.0.0.1:1/pager", "http://127.0.0.1:1/chat"),
    ],
    ids=["gke", "local"],
)
def test_the_alertmanager_routing_passes_amtool(receivers: Receivers, tmp_path: Path) -> None:
    path = tmp_path / "alertmanager.yaml"
    path.write_text(alertmanager_config(receivers, time_zone="Europe/Brussels"))
    assert AMTOOL is not None
    checked = subprocess.run(
        [AMTOOL, "check-config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.skipif(AMTOOL is None, reason="amtool is missing: it comes with alertmanager")
@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ("severity=critical alertname=DatabasePrimaryDown", "pager"),
        ("severity=warning alertname=HighCpu", "chat"),
        ("severity=info alertname=AutoscalerScaled", "dashboard-only"),
    ],
)
def test_each_severity_routes_to_its_receiver(labels: str, receiver: str, tmp_path: Path) -> None:
    path = tmp_path / "alertmanager.yaml"
    path.write_text(
        alertmanager_config(
            webhooks("http://127.0.0.1:1/pager", "http://127.0.0.1:1/chat"),
            time_zone="Europe/Brussels",
        )
    )
    assert AMTOOL is not None
    routed = subprocess.run(
        [AMTOOL, "config", "routes", "test", f"--config.file={path}", *labels.split()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert routed.stdout.strip() == receiver, routed.stdout + routed.stderr


@needs_promtool
def test_the_local_prometheus_config_passes_promtool_check(rules: Path, tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yaml"
    config.write_text(
        prometheus_config(
            [
                ScrapeJob("product", {"127.0.0.1:1": {"service": "product", "pod": "product-0"}}),
                ScrapeJob("postgres", {"127.0.0.1:2": {"namespace": "data", "pod": "pg-0"}}),
            ],
            rule_files=[str(rules)],
            alertmanagers=["127.0.0.1:3"],
        )
    )
    checked = promtool("check", "config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr


def test_metric_names_leaves_functions_labels_and_windows_out() -> None:
    expr = (
        'sum by (pod) (rate(a_total{x="y"}[$__rate_interval])) / on (pod) group_left (node)'
        " max(b_info) > 0.5e3 or vector(0) and clamp(c, 0, 1)"
    )
    assert metric_names(expr) == {"a_total", "b_info", "c"}
