"""A generated secret shared by several namespaces (the access-token signing key)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components.kube import Labels, meta


@dataclass
class SharedSecretArgs:
    namespaces: tuple[str, ...]
    labels: Labels
    key: str = "key"
    length: int = 64


class SharedSecret(pulumi.ComponentResource):
    """One random value, stored as the same Kubernetes Secret in every namespace that uses it."""

    def __init__(
        self, name: str, args: SharedSecretArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("platform:security:SharedSecret", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        value = random.RandomPassword(name, length=args.length, special=False, opts=child)
        for namespace in args.namespaces:
            k8s.core.v1.Secret(
                f"{name}-{namespace}",
                metadata=meta(name, namespace, args.labels.k8s(name, "platform")),
                string_data={args.key: value.result},
                opts=child,
            )
        self.name = name
        self.key = args.key
        self.register_outputs({})
