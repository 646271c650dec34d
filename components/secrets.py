"""Secrets that several namespaces need: the same Kubernetes Secret in each of them."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components.kube import Labels, meta


@dataclass
class SecretCopiesArgs:
    values: dict[str, pulumi.Input[str]]  # key -> value (secret config, generated values)
    namespaces: tuple[str, ...]
    labels: Labels


class SecretCopies(pulumi.ComponentResource):
    """The given values as one Secret named `name` in every listed namespace."""

    def __init__(
        self, name: str, args: SecretCopiesArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("platform:security:SecretCopies", name, None, opts)
        for namespace in args.namespaces:
            k8s.core.v1.Secret(
                f"{name}-{namespace}",
                metadata=meta(name, namespace, args.labels.k8s(name, "platform")),
                string_data=args.values,
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.name = name
        self.register_outputs({})


@dataclass
class SharedSecretArgs:
    namespaces: tuple[str, ...]
    labels: Labels
    key: str = "key"
    length: int = 64


class SharedSecret(pulumi.ComponentResource):
    """A generated random value (the access-token signing key), copied to every namespace."""

    def __init__(
        self, name: str, args: SharedSecretArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("platform:security:SharedSecret", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        value = random.RandomPassword(name, length=args.length, special=False, opts=child)
        SecretCopies(
            name, SecretCopiesArgs({args.key: value.result}, args.namespaces, args.labels), child
        )
        self.name = name
        self.key = args.key
        self.register_outputs({})
