"""Resources as the policy engine sees them: plain, compliant inputs that each test breaks in
exactly one way."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

DIGEST = "europe-west1-docker.pkg.dev/acme/shop/service@sha256:" + "a" * 64
LABELS = {"app": "user", "tier": "app", "environment": "prod", "cost-center": "shop"}


@dataclass
class Resource:
    type: str
    name: str
    inputs: dict[str, Any] = field(default_factory=dict)


def container(name: str = "user", **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "image": DIGEST,
        "resources": {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    spec.update(overrides)
    return spec


def pod_spec(pool: str = "apps", **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [container()],
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "nodeSelector": {"shop.platform/pool": pool},
    }
    if pool != "apps":
        spec["tolerations"] = [
            {
                "key": "shop.platform/dedicated",
                "operator": "Equal",
                "value": pool,
                "effect": "NoSchedule",
            }
        ]
    spec.update(overrides)
    return spec


def deployment(
    name: str = "user",
    namespace: str = "shop",
    labels: dict[str, str] | None = None,
    spec: dict[str, Any] | None = None,
) -> Resource:
    labels = labels or {**LABELS, "app": name}
    return Resource(
        "kubernetes:apps/v1:Deployment",
        f"{name}-deployment",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": labels}, "spec": spec or pod_spec()},
            },
        },
    )


def statefulset(name: str, namespace: str, tier: str, spec: dict[str, Any]) -> Resource:
    labels = {**LABELS, "app": name, "tier": tier}
    return Resource(
        "kubernetes:apps/v1:StatefulSet",
        f"{name}-statefulset",
        {
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "serviceName": name,
                "template": {"metadata": {"labels": labels}, "spec": spec},
            },
        },
    )


def cron_job(name: str, namespace: str, spec: dict[str, Any]) -> Resource:
    labels = {**LABELS, "app": name}
    return Resource(
        "kubernetes:batch/v1:CronJob",
        name,
        {
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "schedule": "0 2 * * *",
                "jobTemplate": {
                    "spec": {"template": {"metadata": {"labels": labels}, "spec": spec}}
                },
            },
        },
    )


def hpa(name: str = "user", namespace: str = "shop", low: int = 3, high: int = 10) -> Resource:
    return Resource(
        "kubernetes:autoscaling/v2:HorizontalPodAutoscaler",
        f"{name}-hpa",
        {
            "metadata": {"name": name, "namespace": namespace, "labels": {**LABELS, "app": name}},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": low,
                "maxReplicas": high,
            },
        },
    )


def pdb(name: str = "user", namespace: str = "shop") -> Resource:
    return Resource(
        "kubernetes:policy/v1:PodDisruptionBudget",
        f"{name}-pdb",
        {
            "metadata": {"name": name, "namespace": namespace, "labels": {**LABELS, "app": name}},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": name}}},
        },
    )


def default_deny(namespace: str = "shop") -> Resource:
    return Resource(
        "kubernetes:networking.k8s.io/v1:NetworkPolicy",
        f"{namespace}-default-deny",
        {
            "metadata": {"name": "default-deny", "namespace": namespace, "labels": LABELS},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        },
    )


def service(app: str, kind: str = "ClusterIP") -> Resource:
    return Resource(
        "kubernetes:core/v1:Service",
        f"{app}-service",
        {
            "metadata": {"name": app, "namespace": "shop", "labels": {**LABELS, "app": app}},
            "spec": {"type": kind, "selector": {"app": app}, "ports": [{"port": 80}]},
        },
    )


def config_map(data: dict[str, str]) -> Resource:
    return Resource(
        "kubernetes:core/v1:ConfigMap",
        "settings",
        {"metadata": {"name": "settings", "namespace": "shop", "labels": LABELS}, "data": data},
    )


GCP_LABELS = {
    "app": "platform",
    "tier": "infrastructure",
    "environment": "prod",
    "cost-center": "shop",
}


def cluster(**overrides: Any) -> Resource:
    inputs: dict[str, Any] = {
        "name": "shop",
        "location": "europe-west1",
        "resourceLabels": {**GCP_LABELS, "monthly-budget-usd": "4000"},
        "removeDefaultNodePool": True,
        "enableShieldedNodes": True,
        "enableLegacyAbac": False,
        "privateClusterConfig": {
            "enablePrivateNodes": True,
            "masterIpv4CidrBlock": "172.16.0.0/28",
        },
        "workloadIdentityConfig": {"workloadPool": "acme.svc.id.goog"},
        "masterAuthorizedNetworksConfig": {
            "cidrBlocks": [{"displayName": "vpn", "cidrBlock": "203.0.113.0/24"}]
        },
    }
    inputs.update(overrides)
    return Resource("gcp:container/cluster:Cluster", "shop", inputs)


def node_pool(
    name: str = "apps",
    machine: str = "e2-standard-4",
    low: int = 3,
    high: int = 9,
    **overrides: Any,
) -> Resource:
    inputs: dict[str, Any] = {
        "name": name,
        "autoscaling": {"totalMinNodeCount": low, "totalMaxNodeCount": high},
        "management": {"autoRepair": True, "autoUpgrade": True},
        "nodeConfig": {
            "machineType": machine,
            "resourceLabels": GCP_LABELS,
            "shieldedInstanceConfig": {"enableSecureBoot": True, "enableIntegrityMonitoring": True},
            "workloadMetadataConfig": {"mode": "GKE_METADATA"},
        },
    }
    inputs.update(overrides)
    return Resource("gcp:container/nodePool:NodePool", f"shop-{name}", inputs)


def bucket(**overrides: Any) -> Resource:
    inputs = {
        "name": "acme-pg-backups",
        "uniformBucketLevelAccess": True,
        "publicAccessPrevention": "enforced",
        "labels": GCP_LABELS,
    }
    inputs.update(overrides)
    return Resource("gcp:storage/bucket:Bucket", "backups", inputs)


def modified(resource: Resource, *path: str, value: Any) -> Resource:
    """A copy of `resource` with the input at `path` set to `value` (ints index lists)."""
    copied = copy.deepcopy(resource)
    target: Any = copied.inputs
    for key in path[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    last = path[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return copied
