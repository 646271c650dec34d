"""Memcached for the product catalog: N nodes with stable names on the cache pool.

Clients hash keys over the nodes themselves (rendezvous hashing), so each node needs a stable
address: a StatefulSet behind a headless Service gives `memcached-<i>.memcached.cache.svc`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.conf.memcached import memcached_args
from components.inputs import Inputs, PositiveInt
from components.kube import (
    Endpoint,
    Labels,
    container,
    disruption_budget,
    headless_service,
    meta,
    pod,
    tcp_probe,
    zone_spread,
)
from components.network_policy import Flow

ENDPOINT = Endpoint("cache", "memcached", 11211)
THREADS = 2  # n2-highmem-2: two vCPUs per cache node


class MemcachedConfig(Inputs):
    nodes: PositiveInt = 3
    memory_mb: PositiveInt = 8192
    max_connections: PositiveInt = 4096


@dataclass
class MemcachedArgs:
    config: MemcachedConfig
    image: pulumi.Input[str]
    labels: Labels


class Memcached(pulumi.ComponentResource):
    nodes: tuple[str, ...]
    flows: list[Flow]

    def __init__(self, name: str, args: MemcachedArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("platform:cache:Memcached", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        app, ns, port = ENDPOINT.app, ENDPOINT.namespace, ENDPOINT.port
        labels = args.labels.k8s(app, "cache")
        count = args.config.nodes
        self.nodes = tuple(f"{app}-{i}.{ENDPOINT.host}:{port}" for i in range(count))
        self.flows = []  # clients only (from the service table); nodes never talk to each other

        service = headless_service(f"{name}-headless", app, ns, labels, {"memcache": port}, child)
        # The container's memory limit leaves room above the item memory for connections.
        memory_limit = f"{int(args.config.memory_mb * 1.15) + 64}Mi"
        memcached = container(
            app,
            args.image,
            ["memcached"],
            ("500m", memory_limit, "2", memory_limit),
            args=memcached_args(
                port, args.config.memory_mb, args.config.max_connections, THREADS, listen="0.0.0.0"
            ),
            ports=[k8s.core.v1.ContainerPortArgs(name="memcache", container_port=port)],
            liveness_probe=tcp_probe("memcache", period_seconds=10, failure_threshold=3),
            readiness_probe=tcp_probe("memcache", period_seconds=5),
        )
        k8s.apps.v1.StatefulSet(
            f"{name}-statefulset",
            metadata=meta(app, ns, labels),
            spec=k8s.apps.v1.StatefulSetSpecArgs(
                service_name=service.metadata.name,
                replicas=count,
                pod_management_policy="Parallel",  # nodes are independent: start them together
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"app": app}),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
                    spec=pod(
                        [memcached], [], "caches", topology_spread_constraints=zone_spread(app)
                    ),
                ),
            ),
            opts=child,
        )
        disruption_budget(f"{name}-pdb", app, ns, labels, child)
        self.register_outputs({"nodes": list(self.nodes)})
