"""The VPC the cluster lives in: one regional subnet with secondary ranges for pods and
services (VPC-native), and Cloud NAT so private nodes reach registries and payment providers
without public IPs."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_gcp import compute

PODS_RANGE = "pods"
SERVICES_RANGE = "services"


@dataclass(frozen=True)
class NetworkArgs:
    region: str
    subnet_cidr: str
    pods_cidr: str
    services_cidr: str


class Network(pulumi.ComponentResource):
    vpc: compute.Network
    subnet: compute.Subnetwork

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("platform:network:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        # Custom-mode VPC: no auto-created subnets in regions we do not use.
        self.vpc = compute.Network(
            f"{name}-vpc",
            name=f"{name}-vpc",
            auto_create_subnetworks=False,
            routing_mode="REGIONAL",
            opts=child,
        )
        self.subnet = compute.Subnetwork(
            f"{name}-subnet",
            name=f"{name}-{args.region}",
            region=args.region,
            network=self.vpc.id,
            ip_cidr_range=args.subnet_cidr,
            # Private nodes still reach Google APIs (GCS backups, Artifact Registry).
            private_ip_google_access=True,
            secondary_ip_ranges=[
                compute.SubnetworkSecondaryIpRangeArgs(
                    range_name=PODS_RANGE, ip_cidr_range=args.pods_cidr
                ),
                compute.SubnetworkSecondaryIpRangeArgs(
                    range_name=SERVICES_RANGE, ip_cidr_range=args.services_cidr
                ),
            ],
            # Flow logs feed security investigations; sampled to keep the cost down.
            log_config=compute.SubnetworkLogConfigArgs(
                aggregation_interval="INTERVAL_10_MIN",
                flow_sampling=0.5,
                metadata="INCLUDE_ALL_METADATA",
            ),
            opts=child,
        )
        router = compute.Router(
            f"{name}-router",
            name=f"{name}-router",
            region=args.region,
            network=self.vpc.id,
            opts=child,
        )
        compute.RouterNat(
            f"{name}-nat",
            name=f"{name}-nat",
            router=router.name,
            region=args.region,
            nat_ip_allocate_option="AUTO_ONLY",
            source_subnetwork_ip_ranges_to_nat="ALL_SUBNETWORKS_ALL_IP_RANGES",
            log_config=compute.RouterNatLogConfigArgs(enable=True, filter="ERRORS_ONLY"),
            opts=child,
        )
        self.register_outputs({"vpc": self.vpc.id, "subnet": self.subnet.id})
