"""Zero-trust networking, generated: default deny everywhere, then one allow per flow.

Nothing here names a service. The flows come from the service table's caller graph and
dependencies (stacks/network.py) and from each data-tier component's own description of its
internal paths (replication, cluster bus, backups, scrapes). Every flow becomes an egress rule
on its source and an ingress rule on its destination, so both ends always agree.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.kube import Labels, meta

PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")


@dataclass(frozen=True)
class Pods:
    """The pods labelled `app=<app>` in a namespace."""

    namespace: str
    app: str


@dataclass(frozen=True)
class Namespace:
    """Every pod of a namespace (the monitoring stack, as one peer)."""

    name: str


@dataclass(frozen=True)
class Cidr:
    cidr: str
    excluding: tuple[str, ...] = ()


Peer = Pods | Namespace | Cidr

ANYWHERE = Cidr("0.0.0.0/0")
# The public internet, never the VPC: payment providers and Google APIs over HTTPS.
PUBLIC_INTERNET = Cidr("0.0.0.0/0", PRIVATE_RANGES)
# Workload Identity: a pod's Google token comes from the GKE metadata server, at
# 169.254.169.254:80, which Dataplane V2 serves from the node at 169.254.169.252:988.
# Link-local, so PUBLIC_INTERNET's port 443 never covers it.
GKE_METADATA_SERVER: tuple[tuple[Cidr, int], ...] = (
    (Cidr("169.254.169.254/32"), 80),
    (Cidr("169.254.169.252/32"), 988),
)


def metadata_server(source: Peer) -> list[Flow]:
    """`source` may ask the metadata server for its Workload Identity token."""
    return [Flow(source, address, (port,)) for address, port in GKE_METADATA_SERVER]


# The monitoring stack's namespace: every component lets it scrape its pods.
MONITORING_NAMESPACE = "monitoring"
MONITORING = Namespace(MONITORING_NAMESPACE)


@dataclass(frozen=True)
class Flow:
    source: Peer
    dest: Peer
    ports: tuple[int, ...]  # empty: every port
    protocol: str = "TCP"


@dataclass
class NetworkPoliciesArgs:
    namespaces: list[str]
    flows: list[Flow]
    labels: Labels


class NetworkPolicies(pulumi.ComponentResource):
    def __init__(
        self, name: str, args: NetworkPoliciesArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("platform:network:NetworkPolicies", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        for ns in args.namespaces:
            labels = args.labels.k8s("network-policy", "platform")
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{ns}-default-deny",
                metadata=meta("default-deny", ns, labels),
                spec=k8s.networking.v1.NetworkPolicySpecArgs(
                    pod_selector=k8s.meta.v1.LabelSelectorArgs(),
                    policy_types=["Ingress", "Egress"],
                ),
                opts=child,
            )
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{ns}-allow-dns",
                metadata=meta("allow-dns", ns, labels),
                spec=k8s.networking.v1.NetworkPolicySpecArgs(
                    pod_selector=k8s.meta.v1.LabelSelectorArgs(),
                    policy_types=["Egress"],
                    egress=[
                        k8s.networking.v1.NetworkPolicyEgressRuleArgs(
                            to=[
                                k8s.networking.v1.NetworkPolicyPeerArgs(
                                    namespace_selector=_namespace_selector("kube-system"),
                                    pod_selector=k8s.meta.v1.LabelSelectorArgs(
                                        match_labels={"k8s-app": "kube-dns"}
                                    ),
                                )
                            ],
                            ports=[
                                k8s.networking.v1.NetworkPolicyPortArgs(protocol=p, port=53)
                                for p in ("UDP", "TCP")
                            ],
                        )
                    ],
                ),
                opts=child,
            )

        for target, (ingress, egress) in sorted(
            _group(args.flows).items(), key=lambda kv: _key(kv[0])
        ):
            ns = target.namespace if isinstance(target, Pods) else target.name
            app = target.app if isinstance(target, Pods) else "all-pods"
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{ns}-{app}",
                metadata=meta(f"allow-{app}", ns, args.labels.k8s(app, "platform")),
                spec=k8s.networking.v1.NetworkPolicySpecArgs(
                    pod_selector=k8s.meta.v1.LabelSelectorArgs(
                        match_labels={"app": target.app} if isinstance(target, Pods) else None
                    ),
                    policy_types=[
                        t for t, rules in (("Ingress", ingress), ("Egress", egress)) if rules
                    ],
                    ingress=[
                        k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                            from_=[_peer(f.source, ns)], ports=_ports(f)
                        )
                        for f in ingress
                    ]
                    or None,
                    egress=[
                        k8s.networking.v1.NetworkPolicyEgressRuleArgs(
                            to=[_peer(f.dest, ns)], ports=_ports(f)
                        )
                        for f in egress
                    ]
                    or None,
                ),
                opts=child,
            )
        self.register_outputs({})


def _group(flows: Iterable[Flow]) -> dict[Pods | Namespace, tuple[list[Flow], list[Flow]]]:
    """Flows by the pods they constrain: (ingress into them, egress out of them)."""
    grouped: dict[Pods | Namespace, tuple[list[Flow], list[Flow]]] = defaultdict(lambda: ([], []))
    for flow in dict.fromkeys(flows):  # identical flows collapse into one rule
        if not isinstance(flow.dest, Cidr):
            grouped[flow.dest][0].append(flow)
        if not isinstance(flow.source, Cidr):
            grouped[flow.source][1].append(flow)
    return grouped


def _key(peer: Pods | Namespace) -> tuple[str, str]:
    return (peer.namespace, peer.app) if isinstance(peer, Pods) else (peer.name, "")


def _peer(peer: Peer, own_namespace: str) -> k8s.networking.v1.NetworkPolicyPeerArgs:
    if isinstance(peer, Cidr):
        return k8s.networking.v1.NetworkPolicyPeerArgs(
            ip_block=k8s.networking.v1.IPBlockArgs(
                cidr=peer.cidr, except_=list(peer.excluding) or None
            )
        )
    if isinstance(peer, Namespace):
        return k8s.networking.v1.NetworkPolicyPeerArgs(
            namespace_selector=_namespace_selector(peer.name)
        )
    return k8s.networking.v1.NetworkPolicyPeerArgs(
        # Within its own namespace a pod selector alone is enough; across, name the namespace.
        namespace_selector=None
        if peer.namespace == own_namespace
        else _namespace_selector(peer.namespace),
        pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"app": peer.app}),
    )


def _ports(flow: Flow) -> list[k8s.networking.v1.NetworkPolicyPortArgs] | None:
    if not flow.ports:
        return None  # every port
    return [
        k8s.networking.v1.NetworkPolicyPortArgs(protocol=flow.protocol, port=p) for p in flow.ports
    ]


def _namespace_selector(name: str) -> k8s.meta.v1.LabelSelectorArgs:
    # Set by Kubernetes itself on every namespace, so it cannot be spoofed by a label edit.
    return k8s.meta.v1.LabelSelectorArgs(match_labels={"kubernetes.io/metadata.name": name})
