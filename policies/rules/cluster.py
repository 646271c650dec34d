"""The GKE cluster and its node pools."""

from __future__ import annotations

import ipaddress

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from policies.rules.kube import dig, items

CLUSTER = "gcp:container/cluster:Cluster"
NODE_POOL = "gcp:container/nodePool:NodePool"


def _cluster(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != CLUSTER:
        return
    props = args.props
    if dig(props, "privateClusterConfig", "enablePrivateNodes") is not True:
        report("nodes must be private (privateClusterConfig.enablePrivateNodes)", None)
    if not dig(props, "workloadIdentityConfig", "workloadPool"):
        report("Workload Identity must be on (workloadIdentityConfig.workloadPool)", None)
    if dig(props, "enableShieldedNodes") is False:
        report("shielded nodes must be on (enableShieldedNodes)", None)
    if dig(props, "removeDefaultNodePool") is not True:
        report("the default node pool must be removed (removeDefaultNodePool)", None)
    if dig(props, "enableLegacyAbac") is True:
        report("legacy ABAC must be off (enableLegacyAbac)", None)
    networks = dig(props, "masterAuthorizedNetworksConfig")
    if networks is None:
        report(
            "the control plane must only accept listed networks (masterAuthorizedNetworksConfig)",
            None,
        )
    for block in items(dig(networks, "cidrBlocks")):
        cidr = str(dig(block, "cidrBlock"))
        if ipaddress.ip_network(cidr, strict=False).prefixlen == 0:
            report(
                f"master authorized network {dig(block, 'displayName')!r} is open to the "
                f"internet ({cidr})",
                None,
            )
    if dig(networks, "gcpPublicCidrsAccessEnabled") is True:
        report("the control plane must not accept all of Google Cloud's public ranges", None)


gke_cluster_hardened = ResourceValidationPolicy(
    name="gke-cluster-hardened",
    description="The GKE cluster is private, has Workload Identity and shielded nodes, no default "
    "node pool, no legacy ABAC, and no 0.0.0.0/0 master authorized network.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_cluster,
)


def _node_pool(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != NODE_POOL:
        return
    management = dig(args.props, "management") or {}
    if dig(management, "autoRepair") is not True:
        report("node pool must auto-repair (management.autoRepair)", None)
    if dig(management, "autoUpgrade") is not True:
        report("node pool must auto-upgrade (management.autoUpgrade)", None)
    shielded = dig(args.props, "nodeConfig", "shieldedInstanceConfig") or {}
    if dig(shielded, "enableSecureBoot") is not True:
        report(
            "node pool must boot securely (nodeConfig.shieldedInstanceConfig.enableSecureBoot)",
            None,
        )
    if dig(args.props, "nodeConfig", "workloadMetadataConfig", "mode") != "GKE_METADATA":
        report(
            "pods must not see the node's metadata (workloadMetadataConfig.mode GKE_METADATA)", None
        )


node_pools_managed = ResourceValidationPolicy(
    name="node-pools-managed",
    description="Node pools auto-repair, auto-upgrade, boot securely and hide node metadata.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_node_pool,
)

POLICIES = [gke_cluster_hardened, node_pools_managed]
