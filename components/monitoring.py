"""Metrics, alerts and the custom metrics the autoscalers read.

Prometheus and Alertmanager come from kube-prometheus-stack; the prometheus-adapter turns the
autoscalers' custom metrics into the Pods/External metrics the HPAs ask for. The alerts are
the composition's (stacks/alerts.py: the seed's). Alertmanager's routing (pager for critical,
chat for warning in business hours, dashboards only for info) lives in a Secret, since its
endpoints are secrets. The dashboards (stacks/dashboards.py) are ConfigMaps the chart's
Grafana loads through its sidecar, over the Prometheus datasource it provisions; Grafana's
admin password is generated here, never the chart's well-known default.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components.conf.grafana import DASHBOARD_LABEL, DATASOURCE_UID, Dashboard, dashboard_json
from components.conf.prometheus import (
    GKE_INTERVAL_S,
    Alert,
    Recording,
    alertmanager_config,
    pagerduty_and_slack,
    rule_groups,
)
from components.kube import APP_UID, Labels, meta
from components.microservice import CustomMetric
from components.network_policy import (
    MONITORING,
    MONITORING_NAMESPACE,
    PUBLIC_INTERNET,
    Cidr,
    Flow,
)

PROMETHEUS_STACK_CHART = ("kube-prometheus-stack", "65.8.1")
ADAPTER_CHART = ("prometheus-adapter", "4.11.0")
CHART_REPO = "https://prometheus-community.github.io/helm-charts"
ALERTMANAGER_SECRET = "alertmanager-routing"
GRAFANA_ADMIN_SECRET = "grafana-admin"


@dataclass
class MonitoringArgs:
    labels: Labels
    alerts: tuple[Alert, ...]
    recordings: tuple[Recording, ...]
    # The autoscalers' custom metrics the adapter serves (the workloads' Scaling).
    custom_metrics: tuple[CustomMetric, ...]
    pagerduty_routing_key: pulumi.Input[str]
    slack_webhook_url: pulumi.Input[str]
    slack_channel: str
    business_hours_time_zone: str
    dashboards: tuple[Dashboard, ...] = ()
    retention_days: int = 15


class Monitoring(pulumi.ComponentResource):
    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("platform:observability:Monitoring", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ns = MONITORING_NAMESPACE
        labels = args.labels.k8s("monitoring", "observability")

        routing = k8s.core.v1.Secret(
            f"{name}-alertmanager-routing",
            metadata=meta(ALERTMANAGER_SECRET, ns, labels),
            type="Opaque",
            string_data={
                "alertmanager.yaml": pulumi.Output.all(
                    args.pagerduty_routing_key, args.slack_webhook_url
                ).apply(
                    lambda s: alertmanager_config(
                        pagerduty_and_slack(s[0], s[1], args.slack_channel),
                        time_zone=args.business_hours_time_zone,
                    )
                )
            },
            opts=child,
        )

        admin = k8s.core.v1.Secret(
            f"{name}-grafana-admin",
            metadata=meta(GRAFANA_ADMIN_SECRET, ns, labels),
            type="Opaque",
            string_data={
                "admin-user": "admin",
                "admin-password": random.RandomPassword(
                    f"{name}-grafana-admin-password", length=32, special=False, opts=child
                ).result,
            },
            opts=child,
        )
        # The dashboards first: Grafana's sidecar finds them when it starts.
        dashboards = [
            k8s.core.v1.ConfigMap(
                f"{name}-dashboard-{dashboard.uid}",
                metadata=meta(
                    f"dashboard-{dashboard.uid}",
                    ns,
                    {**labels, DASHBOARD_LABEL[0]: DASHBOARD_LABEL[1]},
                ),
                data={f"{dashboard.uid}.json": dashboard_json(dashboard)},
                opts=child,
            )
            for dashboard in args.dashboards
        ]

        stack = k8s.helm.v3.Release(
            f"{name}-prometheus",
            name="prometheus",
            namespace=ns,
            chart=PROMETHEUS_STACK_CHART[0],
            version=PROMETHEUS_STACK_CHART[1],
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=CHART_REPO),
            atomic=True,
            values=_prometheus_values(args.retention_days),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[routing, admin, *dashboards]),
        )
        k8s.helm.v3.Release(
            f"{name}-adapter",
            name="prometheus-adapter",
            namespace=ns,
            chart=ADAPTER_CHART[0],
            version=ADAPTER_CHART[1],
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=CHART_REPO),
            atomic=True,
            values={
                "prometheus": {
                    "url": "http://prometheus-kube-prometheus-prometheus.monitoring.svc",
                    "port": 9090,
                },
                "securityContext": _chart_security(),
                "rules": {"default": False, **adapter_rules(args.custom_metrics)},
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[stack]),
        )
        k8s.apiextensions.CustomResource(
            f"{name}-rules",
            api_version="monitoring.coreos.com/v1",
            kind="PrometheusRule",
            metadata=meta("platform-alerts", ns, labels),
            spec={"groups": rule_groups(args.alerts, args.recordings)},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[stack]),
        )
        self.register_outputs({})

    @staticmethod
    def flows(master_cidr: str, node_cidr: str) -> list[Flow]:
        """The monitoring stack's own paths (scrapes of each workload are declared by it)."""
        return [
            Flow(MONITORING, MONITORING, ()),  # Grafana, Prometheus, Alertmanager, the adapter
            Flow(
                MONITORING, Cidr(master_cidr), (443,)
            ),  # the operator and the adapter watch the API
            Flow(Cidr(master_cidr), MONITORING, ()),  # admission webhooks, the metrics API
            Flow(MONITORING, Cidr(node_cidr), (10250,)),  # kubelet and cAdvisor metrics
            Flow(MONITORING, PUBLIC_INTERNET, (443,)),  # Alertmanager to PagerDuty and Slack
        ]


def adapter_rules(metrics: Iterable[CustomMetric]) -> dict[str, list[dict[str, object]]]:
    """prometheus-adapter rules for each custom HPA metric."""
    custom: list[dict[str, object]] = []
    external: list[dict[str, object]] = []
    for metric in metrics:
        rule = {
            "seriesQuery": f'{metric.name}{{namespace!="",pod!=""}}',
            "resources": {
                "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
            },
            "name": {"matches": f"^{metric.name}$", "as": metric.name},
            "metricsQuery": "max(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
        }
        if metric.per_pod:
            custom.append(rule)
        else:
            rule["resources"] = {"overrides": {"namespace": {"resource": "namespace"}}}
            # One value for the whole service: every replica reports the same queue.
            rule["metricsQuery"] = "max(<<.Series>>{<<.LabelMatchers>>})"
            external.append(rule)
    return {"custom": custom, "external": external}


def _chart_security() -> dict[str, object]:
    return {
        "runAsNonRoot": True,
        "runAsUser": APP_UID,
        "runAsGroup": APP_UID,
        "fsGroup": APP_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _prometheus_values(retention_days: int) -> dict[str, object]:
    container = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    return {
        # Node metrics come from GKE's system monitoring; node-exporter would need host access,
        # which the 'restricted' namespace refuses.
        "nodeExporter": {"enabled": False},
        "prometheusOperator": {
            "securityContext": _chart_security(),
            "containerSecurityContext": container,
        },
        "kube-state-metrics": {
            "securityContext": _chart_security(),
            "containerSecurityContext": container,
        },
        "grafana": {
            "enabled": True,
            "admin": {
                "existingSecret": GRAFANA_ADMIN_SECRET,
                "userKey": "admin-user",
                "passwordKey": "admin-password",
            },
            "sidecar": {
                # The ConfigMaps labelled so (components.conf.grafana) are its dashboards ...
                "dashboards": {
                    "enabled": True,
                    "label": DASHBOARD_LABEL[0],
                    "labelValue": DASHBOARD_LABEL[1],
                },
                # ... and every panel names the Prometheus datasource by this uid.
                "datasources": {"enabled": True, "uid": DATASOURCE_UID},
                "securityContext": container,
            },
            "securityContext": _chart_security(),
            "containerSecurityContext": container,
        },
        "prometheus": {
            "prometheusSpec": {
                "retention": f"{retention_days}d",
                # The alerts' holds are written for this pace (the local platform scales them).
                "scrapeInterval": f"{GKE_INTERVAL_S}s",
                "evaluationInterval": f"{GKE_INTERVAL_S}s",
                # Pick up every ServiceMonitor and rule, not only the chart's own.
                "serviceMonitorSelectorNilUsesHelmValues": False,
                "ruleSelectorNilUsesHelmValues": False,
                "podMonitorSelectorNilUsesHelmValues": False,
                "securityContext": _chart_security(),
                "storageSpec": {
                    "volumeClaimTemplate": {
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "50Gi"}},
                        }
                    }
                },
            }
        },
        "alertmanager": {
            "alertmanagerSpec": {
                "configSecret": ALERTMANAGER_SECRET,
                "securityContext": _chart_security(),
            }
        },
    }
