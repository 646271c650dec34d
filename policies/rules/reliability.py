"""Reliability: autoscaled workloads keep their replica count and a disruption budget."""

from __future__ import annotations

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    StackValidationArgs,
    StackValidationPolicy,
)

from policies.rules.kube import dig, labels_of

HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"


def _autoscaled(args: StackValidationArgs, report: ReportViolation) -> None:
    def key(props) -> tuple[str, str]:  # type: ignore[no-untyped-def]
        return (
            str(dig(props, "metadata", "namespace") or "default"),
            str(dig(props, "metadata", "name")),
        )

    deployments = {key(r.props): r for r in args.resources if r.resource_type == DEPLOYMENT}
    budgets = [r.props for r in args.resources if r.resource_type == PDB]
    for hpa in (r for r in args.resources if r.resource_type == HPA):
        namespace = str(dig(hpa.props, "metadata", "namespace") or "default")
        target = dig(hpa.props, "spec", "scaleTargetRef")
        if dig(target, "kind") != "Deployment":
            continue
        deployment = deployments.get((namespace, str(dig(target, "name"))))
        if deployment is None:
            report(
                f"HPA {namespace}/{dig(hpa.props, 'metadata', 'name')} targets a missing "
                "Deployment",
                hpa.urn,
            )
            continue
        name = f"{namespace}/{dig(deployment.props, 'metadata', 'name')}"
        if dig(deployment.props, "spec", "replicas") is not None:
            report(
                f"Deployment {name} sets replicas although an HPA owns the count", deployment.urn
            )
        pod_labels = labels_of(dig(deployment.props, "spec", "template") or {})
        covered = any(
            str(dig(pdb, "metadata", "namespace") or "default") == namespace
            and (dig(pdb, "spec", "selector", "matchLabels") or {}).items() <= pod_labels.items()
            for pdb in budgets
        )
        if not covered:
            report(
                f"Deployment {name} is autoscaled but has no PodDisruptionBudget", deployment.urn
            )


autoscaled_workloads = StackValidationPolicy(
    name="autoscaled-workloads",
    description="Every HPA-managed Deployment has a PodDisruptionBudget and no replicas field.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_autoscaled,
)

POLICIES = [autoscaled_workloads]
