"""Network exposure: default deny everywhere, and only the gateway reachable from outside."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from policies.rules.kube import POD_PATHS, dig, items, labels_of, name_of

NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
SERVICE = "kubernetes:core/v1:Service"
INGRESS = "kubernetes:networking.k8s.io/v1:Ingress"


def is_default_deny(props: Mapping[str, Any]) -> bool:
    """Selects every pod, restricts both directions, allows nothing."""
    spec = dig(props, "spec") or {}
    selector = dig(spec, "podSelector") or {}
    return (
        not dig(selector, "matchLabels")
        and not dig(selector, "matchExpressions")
        and {str(t) for t in items(dig(spec, "policyTypes"))} == {"Ingress", "Egress"}
        and not items(dig(spec, "ingress"))
        and not items(dig(spec, "egress"))
    )


def _default_deny(args: StackValidationArgs, report: ReportViolation) -> None:
    with_workloads: dict[str, str] = {}
    denied: set[str] = set()
    for resource in args.resources:
        namespace = dig(resource.props, "metadata", "namespace") or "default"
        if resource.resource_type in POD_PATHS:
            with_workloads.setdefault(str(namespace), resource.urn)
        elif resource.resource_type == NETWORK_POLICY and is_default_deny(resource.props):
            denied.add(str(namespace))
    for namespace, urn in sorted(with_workloads.items()):
        if namespace not in denied:
            report(
                f"namespace {namespace} runs workloads but has no default-deny NetworkPolicy", urn
            )


default_deny_network_policy = StackValidationPolicy(
    name="default-deny-network-policy",
    description="Every namespace with workloads has a default-deny NetworkPolicy (ingress and "
    "egress).",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_default_deny,
)


def _exposed(args: ResourceValidationArgs, report: ReportViolation) -> None:
    public_apps = set(args.get_config().get("publicApps", ["gateway"]))
    if args.resource_type == SERVICE:
        kind = dig(args.props, "spec", "type") or "ClusterIP"
        app = dig(args.props, "spec", "selector", "app") or labels_of(args.props).get("app")
        if kind in ("LoadBalancer", "NodePort") and app not in public_apps:
            report(
                f"Service {name_of(args.props, args.name)} ({kind}) exposes {app!r} outside "
                "the cluster",
                None,
            )
        if dig(args.props, "spec", "externalIPs"):
            report(f"Service {name_of(args.props, args.name)} sets externalIPs", None)
    elif args.resource_type == INGRESS:
        for rule in items(dig(args.props, "spec", "rules")):
            for path in items(dig(rule, "http", "paths")):
                backend = dig(path, "backend", "service", "name")
                if backend not in public_apps:
                    report(f"Ingress routes to {backend!r}, which may not be exposed", None)


only_gateway_exposed = ResourceValidationPolicy(
    name="only-gateway-exposed",
    description="Only the gateway may be reachable from outside the cluster "
    "(LoadBalancer/NodePort Services, Ingresses).",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_exposed,
    config_schema=PolicyConfigSchema(
        properties={"publicApps": {"type": "array", "items": {"type": "string"}}}
    ),
)

POLICIES = [default_deny_network_policy, only_gateway_exposed]
