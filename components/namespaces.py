"""The platform's namespaces: one per tier, each enforcing Pod Security 'restricted' and
giving containers default requests so nothing runs unbounded."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.kube import Labels, meta

PSS_VERSION = "v1.30"


@dataclass
class NamespacesArgs:
    names: list[str]
    labels: Labels


class Namespaces(pulumi.ComponentResource):
    resources: dict[str, k8s.core.v1.Namespace]

    def __init__(self, name: str, args: NamespacesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("platform:cluster:Namespaces", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.resources = {}
        for ns in args.names:
            labels = args.labels.k8s(ns, "platform")
            # The admission controller rejects any pod that is not 'restricted'.
            for mode in ("enforce", "audit", "warn"):
                labels[f"pod-security.kubernetes.io/{mode}"] = "restricted"
                labels[f"pod-security.kubernetes.io/{mode}-version"] = PSS_VERSION
            namespace = k8s.core.v1.Namespace(
                f"{name}-{ns}", metadata=meta(ns, None, labels), opts=child
            )
            self.resources[ns] = namespace
            k8s.core.v1.LimitRange(
                f"{name}-{ns}-defaults",
                metadata=meta("container-defaults", ns, args.labels.k8s(ns, "platform")),
                spec=k8s.core.v1.LimitRangeSpecArgs(
                    limits=[
                        k8s.core.v1.LimitRangeItemArgs(
                            type="Container",
                            default_request={"cpu": "100m", "memory": "128Mi"},
                            default={"cpu": "500m", "memory": "256Mi"},
                        )
                    ]
                ),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[namespace]),
            )
        self.register_outputs({"namespaces": list(self.resources)})
