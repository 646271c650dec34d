"""The rules of the policy pack, grouped by concern. `POLICIES` is the pack."""

from policies.rules import cluster, cost, data, network, reliability, workloads

PACK_NAME = "ecommerce-guardrails"

POLICIES = [
    *workloads.POLICIES,
    *network.POLICIES,
    *reliability.POLICIES,
    *cluster.POLICIES,
    *data.POLICIES,
    *cost.POLICIES,
]
