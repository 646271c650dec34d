"""A regional, private, hardened GKE cluster and its node pools.

Reads top to bottom like the picture: a least-privilege node identity, a key for secrets at
rest, the control plane (private, Workload Identity, Dataplane V2, shielded nodes, a release
channel and a maintenance window), one node pool per tier, and the Kubernetes provider every
in-cluster component uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import pulumi
import pulumi_kubernetes as k8s
from pulumi_gcp import container, kms, organizations, projects, serviceaccount
from pydantic import Field, model_validator

from components.inputs import Inputs, KeyProblem, NonNegativeInt, PositiveInt
from components.kube import DEDICATED_TAINT, NODE_POOLS, POOL_LABEL, TAINTED_POOLS, NodePoolName
from components.network import PODS_RANGE, SERVICES_RANGE, Network

# The cluster carries its stack's monthly budget, so the policy pack can weigh the node
# pools' cost against it.
BUDGET_LABEL = "monthly-budget-usd"

# What nodes need and nothing more: write logs and metrics, pull images.
NODE_ROLES = (
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
    "roles/monitoring.viewer",
    "roles/stackdriver.resourceMetadata.writer",
    "roles/artifactregistry.reader",
)


CONFIDENTIAL_FAMILIES = ("n2d-", "c2d-", "c3d-")  # Confidential GKE Nodes: AMD only


class MaintenanceWindow(Inputs):
    # A weekly window in UTC, as an RFC 5545 recurrence (GKE's recurring window).
    start: str = "2024-01-06T02:00:00Z"
    end: str = "2024-01-06T06:00:00Z"
    recurrence: str = "FREQ=WEEKLY;BYDAY=SA,SU"


class ClusterConfig(Inputs):
    release_channel: Literal["RAPID", "REGULAR", "STABLE"] = "REGULAR"
    maintenance_window: MaintenanceWindow = MaintenanceWindow()
    # The cluster autoscaler's envelope (seed: 6..20 nodes, 2 per zone); pools must fit in it.
    min_nodes: PositiveInt = 6
    max_nodes: PositiveInt = 20
    deletion_protection: bool = True


class NodePoolConfig(Inputs):
    machine_type: str = Field(pattern=r"^[a-z0-9]+-[a-z0-9]+-\d+$")
    # Totals across the cluster's zones (GKE's total_min/total_max_node_count).
    min_nodes: NonNegativeInt
    max_nodes: PositiveInt
    disk_size_gb: Annotated[int, Field(ge=20)] = 100
    disk_type: Literal["pd-standard", "pd-balanced", "pd-ssd"] = "pd-balanced"
    spot: bool = False
    # Confidential GKE Nodes encrypt memory (seed: payment nodes); AMD machine families only.
    confidential: bool = False
    max_surge: NonNegativeInt = 1
    max_unavailable: NonNegativeInt = 0

    @model_validator(mode="after")
    def _bounds(self) -> NodePoolConfig:
        if self.min_nodes > self.max_nodes:
            raise KeyProblem(
                "minNodes", f"expected <= maxNodes ({self.max_nodes}), got {self.min_nodes}"
            )
        if self.confidential and not self.machine_type.startswith(CONFIDENTIAL_FAMILIES):
            raise KeyProblem(
                "machineType",
                f"expected an {'/'.join(f[:-1] for f in CONFIDENTIAL_FAMILIES)} machine type "
                f"for confidential nodes, got {self.machine_type}",
            )
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise KeyProblem(
                "maxSurge", "expected maxSurge or maxUnavailable > 0, or upgrades cannot progress"
            )
        return self


class NodePools(Inputs):
    apps: NodePoolConfig
    databases: NodePoolConfig
    caches: NodePoolConfig
    payments: NodePoolConfig

    def items(self) -> list[tuple[NodePoolName, NodePoolConfig]]:
        return [(name, getattr(self, name)) for name in NODE_POOLS]


@dataclass(frozen=True)
class GkeClusterArgs:
    project: str
    region: str
    zones: tuple[str, ...]
    network: Network
    master_cidr: str
    master_authorized_networks: tuple[tuple[str, str], ...]  # (name, cidr)
    cluster: ClusterConfig
    node_pools: NodePools
    labels: dict[str, str]
    monthly_budget_usd: int | None = None


class GkeCluster(pulumi.ComponentResource):
    cluster: container.Cluster
    provider: k8s.Provider
    node_service_account: serviceaccount.Account
    pools: dict[NodePoolName, container.NodePool]

    def __init__(self, name: str, args: GkeClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("platform:cluster:GkeCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        # Nodes run as their own service account, never the Compute default (Editor).
        self.node_service_account = serviceaccount.Account(
            f"{name}-nodes",
            account_id=f"{name}-nodes",
            display_name=f"GKE nodes of {name}",
            opts=child,
        )
        for role in NODE_ROLES:
            projects.IAMMember(
                f"{name}-nodes-{role.split('/')[1].replace('.', '-')}",
                project=args.project,
                role=role,
                member=self.node_service_account.email.apply(lambda e: f"serviceAccount:{e}"),
                opts=child,
            )

        secrets_key = self._secrets_key(name, args, child)

        self.cluster = container.Cluster(
            name,
            name=name,
            location=args.region,  # regional: the control plane is replicated over zones
            node_locations=list(args.zones),
            network=args.network.vpc.id,
            subnetwork=args.network.subnet.id,
            resource_labels={
                **args.labels,
                **({BUDGET_LABEL: str(args.monthly_budget_usd)} if args.monthly_budget_usd else {}),
            },
            # Node pools are managed below; the default pool is removed right away.
            remove_default_node_pool=True,
            initial_node_count=1,
            deletion_protection=args.cluster.deletion_protection,
            release_channel=container.ClusterReleaseChannelArgs(
                channel=args.cluster.release_channel
            ),
            maintenance_policy=container.ClusterMaintenancePolicyArgs(
                recurring_window=container.ClusterMaintenancePolicyRecurringWindowArgs(
                    start_time=args.cluster.maintenance_window.start,
                    end_time=args.cluster.maintenance_window.end,
                    recurrence=args.cluster.maintenance_window.recurrence,
                )
            ),
            ip_allocation_policy=container.ClusterIpAllocationPolicyArgs(
                cluster_secondary_range_name=PODS_RANGE,
                services_secondary_range_name=SERVICES_RANGE,
            ),
            private_cluster_config=container.ClusterPrivateClusterConfigArgs(
                enable_private_nodes=True,  # nodes have no public IPs
                enable_private_endpoint=False,  # the API is reachable, but only from the list below
                master_ipv4_cidr_block=args.master_cidr,
                master_global_access_config=container.ClusterPrivateClusterConfigMasterGlobalAccessConfigArgs(
                    enabled=False
                ),
            ),
            master_authorized_networks_config=container.ClusterMasterAuthorizedNetworksConfigArgs(
                cidr_blocks=[
                    container.ClusterMasterAuthorizedNetworksConfigCidrBlockArgs(
                        display_name=net_name, cidr_block=cidr
                    )
                    for net_name, cidr in args.master_authorized_networks
                ],
                gcp_public_cidrs_access_enabled=False,
            ),
            # Pods get Google identities without node keys.
            workload_identity_config=container.ClusterWorkloadIdentityConfigArgs(
                workload_pool=f"{args.project}.svc.id.goog"
            ),
            # Dataplane V2 (eBPF) enforces NetworkPolicies; no separate Calico add-on.
            datapath_provider="ADVANCED_DATAPATH",
            enable_shielded_nodes=True,
            enable_legacy_abac=False,
            enable_intranode_visibility=True,
            master_auth=container.ClusterMasterAuthArgs(
                client_certificate_config=container.ClusterMasterAuthClientCertificateConfigArgs(
                    issue_client_certificate=False
                )
            ),
            database_encryption=container.ClusterDatabaseEncryptionArgs(
                state="ENCRYPTED", key_name=secrets_key.id
            ),
            security_posture_config=container.ClusterSecurityPostureConfigArgs(
                mode="BASIC", vulnerability_mode="VULNERABILITY_BASIC"
            ),
            # Autoscaling runs per node pool; this profile packs nodes before adding more.
            cluster_autoscaling=container.ClusterClusterAutoscalingArgs(
                autoscaling_profile="OPTIMIZE_UTILIZATION"
            ),
            logging_config=container.ClusterLoggingConfigArgs(
                enable_components=["SYSTEM_COMPONENTS", "WORKLOADS"]
            ),
            monitoring_config=container.ClusterMonitoringConfigArgs(
                enable_components=["SYSTEM_COMPONENTS"],
                managed_prometheus=container.ClusterMonitoringConfigManagedPrometheusArgs(
                    enabled=False  # the platform runs its own Prometheus (components/monitoring)
                ),
            ),
            addons_config=container.ClusterAddonsConfigArgs(
                http_load_balancing=container.ClusterAddonsConfigHttpLoadBalancingArgs(
                    disabled=False
                ),
                horizontal_pod_autoscaling=container.ClusterAddonsConfigHorizontalPodAutoscalingArgs(
                    disabled=False
                ),
                gce_persistent_disk_csi_driver_config=container.ClusterAddonsConfigGcePersistentDiskCsiDriverConfigArgs(
                    enabled=True
                ),
                # Backup for GKE's agent: namespaces' volumes and Secrets on a schedule
                # (components/volume_backups.py).
                gke_backup_agent_config=container.ClusterAddonsConfigGkeBackupAgentConfigArgs(
                    enabled=True
                ),
            ),
            opts=child,
        )

        self.pools = {
            pool_name: self._node_pool(name, pool_name, pool, args, child)
            for pool_name, pool in args.node_pools.items()
        }

        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=_kubeconfig(self.cluster),
            # Server-side apply: field ownership, so out-of-band edits show up as conflicts.
            enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(self.pools.values())),
        )
        self.register_outputs(
            {
                "name": self.cluster.name,
                "endpoint": self.cluster.endpoint,
                "node_service_account": self.node_service_account.email,
            }
        )

    def _secrets_key(
        self, name: str, args: GkeClusterArgs, child: pulumi.ResourceOptions
    ) -> kms.CryptoKey:
        """A customer-managed key for Kubernetes Secrets at rest (application-layer)."""
        ring = kms.KeyRing(f"{name}-keys", name=f"{name}-keys", location=args.region, opts=child)
        key = kms.CryptoKey(
            f"{name}-secrets",
            name=f"{name}-secrets",
            key_ring=ring.id,
            rotation_period=f"{90 * 24 * 3600}s",
            labels=args.labels,
            opts=pulumi.ResourceOptions(parent=self, protect=args.cluster.deletion_protection),
        )
        project = organizations.get_project_output(project_id=args.project)
        agent = project.number.apply(
            lambda n: f"serviceAccount:service-{n}@container-engine-robot.iam.gserviceaccount.com"
        )
        kms.CryptoKeyIAMMember(
            f"{name}-secrets-gke",
            crypto_key_id=key.id,
            role="roles/cloudkms.cryptoKeyEncrypterDecrypter",
            member=agent,
            opts=child,
        )
        return key

    def _node_pool(
        self,
        cluster_name: str,
        pool_name: NodePoolName,
        pool: NodePoolConfig,
        args: GkeClusterArgs,
        child: pulumi.ResourceOptions,
    ) -> container.NodePool:
        taints = (
            [
                container.NodePoolNodeConfigTaintArgs(
                    key=DEDICATED_TAINT, value=pool_name, effect="NO_SCHEDULE"
                )
            ]
            if pool_name in TAINTED_POOLS
            else None
        )
        return container.NodePool(
            f"{cluster_name}-{pool_name}",
            name=pool_name,
            cluster=self.cluster.id,
            location=args.region,
            node_locations=list(args.zones),
            autoscaling=container.NodePoolAutoscalingArgs(
                total_min_node_count=pool.min_nodes,
                total_max_node_count=pool.max_nodes,
                location_policy="BALANCED",  # keep zones even, so zone-pinned pods fit
            ),
            management=container.NodePoolManagementArgs(auto_repair=True, auto_upgrade=True),
            upgrade_settings=container.NodePoolUpgradeSettingsArgs(
                strategy="SURGE", max_surge=pool.max_surge, max_unavailable=pool.max_unavailable
            ),
            node_config=container.NodePoolNodeConfigArgs(
                machine_type=pool.machine_type,
                disk_size_gb=pool.disk_size_gb,
                disk_type=pool.disk_type,
                image_type="COS_CONTAINERD",
                spot=pool.spot,
                service_account=self.node_service_account.email,
                oauth_scopes=["https://www.googleapis.com/auth/cloud-platform"],
                labels={POOL_LABEL: pool_name},
                resource_labels=args.labels,
                taints=taints,
                metadata={"disable-legacy-endpoints": "true"},
                workload_metadata_config=container.NodePoolNodeConfigWorkloadMetadataConfigArgs(
                    mode="GKE_METADATA"  # pods see Workload Identity, never the node's identity
                ),
                shielded_instance_config=container.NodePoolNodeConfigShieldedInstanceConfigArgs(
                    enable_secure_boot=True, enable_integrity_monitoring=True
                ),
                # Memory encryption where the stack asks for it (seed: the payment nodes).
                confidential_nodes=container.NodePoolNodeConfigConfidentialNodesArgs(enabled=True)
                if pool.confidential
                else None,
            ),
            opts=child,
        )


def _kubeconfig(cluster: container.Cluster) -> pulumi.Output[str]:
    """A kubeconfig that authenticates with gke-gcloud-auth-plugin (no static credentials)."""

    def render(values: list[str]) -> str:
        name, endpoint, ca = values
        return f"""apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: https://{endpoint}
    certificate-authority-data: {ca}
contexts:
- name: {name}
  context: {{cluster: {name}, user: {name}}}
current-context: {name}
users:
- name: {name}
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: gke-gcloud-auth-plugin
      installHint: Install gke-gcloud-auth-plugin (gcloud components install gke-gcloud-auth-plugin)
      provideClusterInfo: true
"""

    return pulumi.Output.all(
        cluster.name, cluster.endpoint, cluster.master_auth.cluster_ca_certificate
    ).apply(render)
