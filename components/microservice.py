"""One workload (a service of the service table), as Kubernetes runs it.

A ServiceAccount without a token, a Deployment of restricted pods spread over zones, a
Service, an autoscaling/v2 HPA with the table's targets and behaviour (the HPA owns the
replica count, so the Deployment has none), a PodDisruptionBudget and a ServiceMonitor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pulumi
import pulumi_kubernetes as k8s

from components.kube import (
    Labels,
    NodePoolName,
    checkov_skips,
    config_map_volume,
    container,
    disruption_budget,
    empty_dir,
    env_vars,
    headless_service,
    http_probe,
    meta,
    mount,
    pod,
    secret_env_vars,
    secret_volume,
    tcp_probe,
    zone_spread,
)

SECRETS_DIR = "/var/run/secrets/shop"
CONFIG_DIR = "/etc/shop"


@dataclass(frozen=True)
class ScalePolicy:
    """One HPA behaviour direction: change by `percent` at most every `period_seconds`."""

    percent: int
    period_seconds: int
    stabilization_seconds: int = 0


@dataclass(frozen=True)
class CustomMetric:
    """An extra HPA metric from the services' Prometheus metrics (via the adapter).

    `per_pod` metrics are averaged over the pods (type Pods); others are one value for the
    whole service (type External) divided across replicas by an AverageValue target.
    """

    name: str
    target: str  # a Kubernetes quantity: "1000", "150m"
    per_pod: bool
    why: str


@dataclass(frozen=True)
class Scaling:
    min_replicas: int
    max_replicas: int
    cpu_percent: int
    memory_percent: int
    scale_up: ScalePolicy
    scale_down: ScalePolicy
    custom_metric: CustomMetric | None = None


@dataclass(frozen=True)
class Resources:
    cpu_request: str
    memory_request: str
    cpu_limit: str
    memory_limit: str


@dataclass(frozen=True)
class Workload:
    """What the component runs: one process image, where, how big, how it scales."""

    name: str
    namespace: str
    argv: tuple[str, ...]
    resources: Resources
    scaling: Scaling
    node_pool: NodePoolName
    port: int
    metrics_port: int
    # Public: a LoadBalancer on port 80 (the gateway); else a ClusterIP Service on `port`.
    public: bool = False
    # A headless Service `<name>-pods` too, whose DNS answers are the ready pods (the
    # gateway balances over them itself).
    pods_service: bool = False
    # "service": /healthz and /readyz (services.kit); "haproxy": its monitor URI answers
    # once it serves, so that is its readiness.
    probes: Literal["service", "haproxy"] = "service"


@dataclass
class MicroserviceArgs:
    workload: Workload
    image: pulumi.Input[str]
    min_replicas: int
    max_replicas: int
    labels: Labels
    env: dict[str, pulumi.Input[str]] = field(default_factory=dict)
    # Kubernetes Secret names mounted as files under SECRETS_DIR/<name>/.
    secrets: tuple[str, ...] = ()
    # Environment variable -> (Secret, key), only for programs that cannot read a secret from
    # a file (HAProxy's HMAC key). The Deployment holds the reference, never the value.
    secret_env: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Files rendered for this service (the gateway's haproxy.cfg), mounted at `config_path`.
    config_files: dict[str, pulumi.Input[str]] = field(default_factory=dict)
    config_path: str = CONFIG_DIR
    # Only the gateway: who may reach its public load balancer.
    public_source_ranges: tuple[str, ...] = ()


class Microservice(pulumi.ComponentResource):
    deployment: k8s.apps.v1.Deployment
    service: k8s.core.v1.Service

    def __init__(
        self, name: str, args: MicroserviceArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("platform:apps:Microservice", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        svc = args.workload
        ns = svc.namespace
        labels = args.labels.k8s(svc.name, "edge" if svc.public else "app")

        # Its own identity, and no API token: services never talk to the Kubernetes API.
        account = k8s.core.v1.ServiceAccount(
            f"{name}-sa",
            metadata=meta(svc.name, ns, labels),
            automount_service_account_token=False,
            opts=child,
        )

        volumes = [empty_dir("tmp")]
        mounts = [mount("tmp", "/tmp")]
        for secret in args.secrets:
            volumes.append(secret_volume(f"secret-{secret}", secret))
            mounts.append(mount(f"secret-{secret}", f"{SECRETS_DIR}/{secret}", read_only=True))
        config_hash = None
        if args.config_files:
            config_map = k8s.core.v1.ConfigMap(
                f"{name}-config",
                metadata=meta(f"{svc.name}-config", ns, labels),
                data=args.config_files,
                immutable=False,
                opts=child,
            )
            volumes.append(config_map_volume("config", config_map.metadata.name))
            mounts.append(mount("config", args.config_path, read_only=True))
            # Roll the pods when their configuration changes.
            config_hash = pulumi.Output.all(*args.config_files.values()).apply(_digest)

        selector = {"app": svc.name}
        r = svc.resources
        main = container(
            svc.name,
            args.image,
            list(svc.argv),
            (r.cpu_request, r.memory_request, r.cpu_limit, r.memory_limit),
            mounts,
            ports=_ports(svc),
            env=env_vars(args.env) + secret_env_vars(args.secret_env),
            **_probes(svc),
        )
        skips = (
            checkov_skips(
                CKV_K8S_35="the program reads this secret only from its environment (see "
                "MicroserviceArgs.secret_env); every other secret is a file"
            )
            if args.secret_env
            else None
        )
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=meta(svc.name, ns, labels, skips),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                # No `replicas`: the HPA owns the count, and a re-apply must not reset it.
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
                revision_history_limit=5,
                strategy=k8s.apps.v1.DeploymentStrategyArgs(
                    type="RollingUpdate",
                    rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(
                        max_surge="25%", max_unavailable=0
                    ),
                ),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(
                        labels=labels,
                        annotations={"shop.platform/config-hash": config_hash}
                        if config_hash
                        else None,
                    ),
                    spec=pod(
                        [main],
                        volumes,
                        svc.node_pool,
                        service_account_name=account.metadata.name,
                        topology_spread_constraints=zone_spread(svc.name),
                        termination_grace_period_seconds=30,
                    ),
                ),
            ),
            opts=child,
        )

        public = svc.public
        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=meta(svc.name, ns, labels),
            spec=k8s.core.v1.ServiceSpecArgs(
                type="LoadBalancer" if public else "ClusterIP",
                selector=selector,
                ports=[
                    k8s.core.v1.ServicePortArgs(
                        name="http", port=80 if public else svc.port, target_port="http"
                    ),
                    *(
                        [
                            k8s.core.v1.ServicePortArgs(
                                name="metrics", port=svc.metrics_port, target_port="metrics"
                            )
                        ]
                        if svc.metrics_port != svc.port
                        else []
                    ),
                ],
                load_balancer_source_ranges=list(args.public_source_ranges) if public else None,
                external_traffic_policy="Local" if public else None,  # keep client addresses
            ),
            opts=child,
        )

        if svc.pods_service:
            headless_service(
                f"{name}-pods", f"{svc.name}-pods", ns, labels, {"http": svc.port}, child
            )

        scaling = svc.scaling
        k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-hpa",
            metadata=meta(svc.name, ns, labels),
            spec=k8s.autoscaling.v2.HorizontalPodAutoscalerSpecArgs(
                scale_target_ref=k8s.autoscaling.v2.CrossVersionObjectReferenceArgs(
                    api_version="apps/v1", kind="Deployment", name=self.deployment.metadata.name
                ),
                min_replicas=args.min_replicas,
                max_replicas=args.max_replicas,
                metrics=[
                    _resource_metric("cpu", scaling.cpu_percent),
                    _resource_metric("memory", scaling.memory_percent),
                    *([_custom_metric(scaling.custom_metric)] if scaling.custom_metric else []),
                ],
                behavior=k8s.autoscaling.v2.HorizontalPodAutoscalerBehaviorArgs(
                    scale_up=_rules(scaling.scale_up),
                    scale_down=_rules(scaling.scale_down),
                ),
            ),
            opts=child,
        )
        disruption_budget(f"{name}-pdb", svc.name, ns, labels, child)
        k8s.apiextensions.CustomResource(
            f"{name}-monitor",
            api_version="monitoring.coreos.com/v1",
            kind="ServiceMonitor",
            metadata=meta(svc.name, ns, labels),
            spec={
                "selector": {"matchLabels": selector},
                "endpoints": [
                    {
                        "port": "metrics" if svc.metrics_port != svc.port else "http",
                        "path": "/metrics",
                        "interval": "15s",
                    }
                ],
            },
            opts=child,
        )
        self.register_outputs({"deployment": self.deployment.metadata.name})


def _ports(svc: Workload) -> list[k8s.core.v1.ContainerPortArgs]:
    ports = [k8s.core.v1.ContainerPortArgs(name="http", container_port=svc.port)]
    if svc.metrics_port != svc.port:
        ports.append(k8s.core.v1.ContainerPortArgs(name="metrics", container_port=svc.metrics_port))
    return ports


def _probes(svc: Workload) -> dict[str, k8s.core.v1.ProbeArgs]:
    """Liveness asks "is the process alive", readiness "can it serve": distinct on purpose,
    so a database outage takes pods out of rotation without restarting them all. HAProxy
    answers its monitor URI once it serves; that is its readiness."""
    if svc.probes == "haproxy":
        alive = tcp_probe("http", period_seconds=10, failure_threshold=3, timeout_seconds=2)
        ready = http_probe("/healthz", "http", period_seconds=5, failure_threshold=2)
        started = tcp_probe("http", period_seconds=2, failure_threshold=30)
    else:
        alive = http_probe("/healthz", "http", period_seconds=10, failure_threshold=3)
        ready = http_probe("/readyz", "http", period_seconds=5, failure_threshold=2)
        started = http_probe("/healthz", "http", period_seconds=2, failure_threshold=30)
    return {"liveness_probe": alive, "readiness_probe": ready, "startup_probe": started}


def _resource_metric(resource: str, percent: int) -> k8s.autoscaling.v2.MetricSpecArgs:
    return k8s.autoscaling.v2.MetricSpecArgs(
        type="Resource",
        resource=k8s.autoscaling.v2.ResourceMetricSourceArgs(
            name=resource,
            target=k8s.autoscaling.v2.MetricTargetArgs(
                type="Utilization", average_utilization=percent
            ),
        ),
    )


def _custom_metric(metric: CustomMetric) -> k8s.autoscaling.v2.MetricSpecArgs:
    target = k8s.autoscaling.v2.MetricTargetArgs(type="AverageValue", average_value=metric.target)
    identifier = k8s.autoscaling.v2.MetricIdentifierArgs(name=metric.name)
    if metric.per_pod:
        return k8s.autoscaling.v2.MetricSpecArgs(
            type="Pods",
            pods=k8s.autoscaling.v2.PodsMetricSourceArgs(metric=identifier, target=target),
        )
    return k8s.autoscaling.v2.MetricSpecArgs(
        type="External",
        external=k8s.autoscaling.v2.ExternalMetricSourceArgs(metric=identifier, target=target),
    )


def _rules(policy: ScalePolicy) -> k8s.autoscaling.v2.HPAScalingRulesArgs:
    return k8s.autoscaling.v2.HPAScalingRulesArgs(
        stabilization_window_seconds=policy.stabilization_seconds,
        select_policy="Max",
        policies=[
            k8s.autoscaling.v2.HPAScalingPolicyArgs(
                type="Percent", value=policy.percent, period_seconds=policy.period_seconds
            )
        ],
    )


def _digest(values: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\0".join(values).encode()).hexdigest()[:16]
