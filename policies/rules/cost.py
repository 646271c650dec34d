"""Cost and hygiene (advisory): the node bill against the stack's budget, and labels that say
who owns and pays for every resource."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from policies.rules.kube import K8S, dig
from policies.rules.prices import MONTHLY_USD, PRICES_TAKEN, REGION, SPOT_FACTOR

# The pack reads the names the components write; tests/policies holds the two equal.
BUDGET_LABEL = "monthly-budget-usd"  # the cluster's: its stack's monthly budget
CLUSTER = "gcp:container/cluster:Cluster"
NODE_POOL = "gcp:container/nodePool:NodePool"
REQUIRED_LABELS = ("app", "tier", "environment", "cost-center")
# Google Cloud resources that take labels, and where.
GCP_LABELS: dict[str, tuple[str, ...]] = {
    CLUSTER: ("resourceLabels",),
    NODE_POOL: ("nodeConfig", "resourceLabels"),
    "gcp:storage/bucket:Bucket": ("labels",),
    "gcp:kms/cryptoKey:CryptoKey": ("labels",),
    "gcp:artifactregistry/repository:Repository": ("labels",),
}
# Not Kubernetes objects, and labelled by their chart, not by us.
UNLABELLED = ("kubernetes:helm.sh/", "pulumi:providers:")


@dataclass(frozen=True)
class CostEstimate:
    low_usd: int  # every pool at its minimum
    high_usd: int  # every pool at its maximum
    unpriced: tuple[str, ...]  # machine types missing from the price table

    def describe(self) -> str:
        text = (
            f"estimated nodes ${self.low_usd:,}..${self.high_usd:,}/month "
            f"({REGION} list prices of {PRICES_TAKEN})"
        )
        if self.unpriced:
            text += f"; no price for {', '.join(self.unpriced)}"
        return text


def estimate(resources: Iterable[PolicyResource]) -> CostEstimate:
    low = high = 0.0
    unpriced: list[str] = []
    for pool in (r for r in resources if r.resource_type == NODE_POOL):
        machine = str(dig(pool.props, "nodeConfig", "machineType"))
        if machine not in MONTHLY_USD:
            unpriced.append(machine)
            continue
        price = MONTHLY_USD[machine] * (SPOT_FACTOR if dig(pool.props, "nodeConfig", "spot") else 1)
        scaling = dig(pool.props, "autoscaling") or {}
        low += price * (dig(scaling, "totalMinNodeCount") or dig(pool.props, "nodeCount") or 0)
        high += price * (dig(scaling, "totalMaxNodeCount") or dig(pool.props, "nodeCount") or 0)
    return CostEstimate(round(low), round(high), tuple(sorted(set(unpriced))))


def budget(resources: Iterable[PolicyResource]) -> int | None:
    for cluster in (r for r in resources if r.resource_type == CLUSTER):
        value = dig(cluster.props, "resourceLabels", BUDGET_LABEL)
        if value is not None:
            return int(value)
    return None


def _cost(args: StackValidationArgs, report: ReportViolation) -> None:
    if not any(r.resource_type == NODE_POOL for r in args.resources):
        return  # a stack without node pools has no node bill
    found = estimate(args.resources)
    limit = budget(args.resources)
    if limit is None:
        report(f"{found.describe()}; no budget set (ecommerce:monthlyBudgetUsd)", None)
    elif found.high_usd > limit:
        report(f"{found.describe()}: the ceiling is above the ${limit:,} budget", None)
    if found.unpriced:
        report(
            f"no list price for {', '.join(found.unpriced)}: add it to policies/rules/prices.py",
            None,
        )


monthly_cost = StackValidationPolicy(
    name="monthly-cost-estimate",
    description="The node pools' estimated monthly cost at full scale stays within the stack's "
    "budget.",
    enforcement_level=EnforcementLevel.ADVISORY,
    validate=_cost,
)


def _missing(labels: Any) -> list[str]:
    present = labels if isinstance(labels, Mapping) else {}
    return [label for label in REQUIRED_LABELS if label not in present]


def _labels(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type.startswith(UNLABELLED):
        return
    if args.resource_type.startswith(K8S):
        missing = _missing(dig(args.props, "metadata", "labels"))
    elif args.resource_type in GCP_LABELS:
        missing = _missing(dig(args.props, *GCP_LABELS[args.resource_type]))
    else:
        return
    if missing:
        report(f"missing labels: {', '.join(missing)}", None)


required_labels = ResourceValidationPolicy(
    name="required-labels",
    description="Every resource that takes labels carries app, tier, environment and cost-center.",
    enforcement_level=EnforcementLevel.ADVISORY,
    validate=_labels,
)

POLICIES = [monthly_cost, required_labels]
