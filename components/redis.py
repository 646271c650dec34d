"""The Redis cluster: sessions, carts, search results, event streams.

Six nodes (3 masters + 3 replicas in prod) on the cache pool, one StatefulSet each, pinned
to zones (node i in zone i mod n) so that the bootstrap can give every master a replica in
another zone (a zone loss leaves every shard a copy); each with its own SSD volume and its
own rendered redis.conf; a bootstrap Job forms the cluster once (and is a no-op afterwards);
a generated password, given to clients as a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random
from pydantic import Field

from components.conf import zone_of
from components.conf.redis import (
    RedisClusterSpec,
    RedisNode,
    cluster_bootstrap_sh,
    exporter_passwords,
    redis_auth_conf,
    redis_conf,
)
from components.inputs import Inputs, NonNegativeInt, PositiveInt
from components.kube import (
    Endpoint,
    Labels,
    config_map_volume,
    container,
    disruption_budget,
    empty_dir,
    exec_probe,
    headless_service,
    http_probe,
    meta,
    mount,
    pinned_to_zone,
    pod,
    pod_monitor,
    secret_volume,
    tcp_probe,
    volume_claim,
)
from components.network_policy import MONITORING, Flow, Pods

ENDPOINT = Endpoint("cache", "redis", 6379)  # every node; clients follow the cluster
AUTH_SECRET = "redis-auth"  # in the cache namespace and in every client namespace
EXPORTER_PORT = 9121
DATA_DIR = "/data"
CONFIG_DIR = "/etc/redis"
AUTH_DIR = "/etc/redis-auth"


class RedisConfig(Inputs):
    masters: Annotated[int, Field(ge=3)] = 3  # Redis Cluster needs at least 3 masters
    replicas_per_master: NonNegativeInt = 1
    maxmemory_mb: PositiveInt = 4096
    storage_gb: PositiveInt = 20


@dataclass
class RedisArgs:
    config: RedisConfig
    image: pulumi.Input[str]
    labels: Labels
    client_namespaces: tuple[str, ...]
    zones: tuple[str, ...]
    storage_class: str = "premium-rwo"  # GKE's SSD persistent disk class


class RedisCluster(pulumi.ComponentResource):
    nodes: tuple[str, ...]
    auth_secret: str
    flows: list[Flow]

    def __init__(self, name: str, args: RedisArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("platform:cache:RedisCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        app, ns, port = ENDPOINT.app, ENDPOINT.namespace, ENDPOINT.port
        labels = args.labels.k8s(app, "cache")
        count = args.config.masters * (args.config.replicas_per_master + 1)
        spec = RedisClusterSpec(
            nodes=tuple(
                RedisNode(
                    name=f"{app}-{i}",
                    host=f"{app}-{i}-0.{ENDPOINT.host}",  # pod 0 of StatefulSet redis-<i>
                    port=port,
                    zone=zone_of(i, args.zones),
                )
                for i in range(count)
            ),
            replicas_per_master=args.config.replicas_per_master,
            maxmemory_mb=args.config.maxmemory_mb,
            # Pod IPs change on restart; DNS names do not.
            announce_hostnames=True,
        )
        self.nodes = tuple(node.endpoint for node in spec.nodes)
        self.auth_secret = AUTH_SECRET
        bootstrap_app = f"{app}-bootstrap"
        bus_port = spec.nodes[0].cluster_bus_port
        # redis-cli reads the password from its env var, set from the mounted Secret file.
        with_password = f'REDISCLI_AUTH="$(cat {AUTH_DIR}/password)"'
        self.flows = [
            Flow(Pods(ns, app), Pods(ns, app), (port, bus_port)),
            Flow(Pods(ns, bootstrap_app), Pods(ns, app), (port, bus_port)),
            Flow(MONITORING, Pods(ns, app), (EXPORTER_PORT,)),
        ]

        password = random.RandomPassword(f"{name}-password", length=40, special=False, opts=child)
        secret_data = {
            "password": password.result,
            "auth.conf": password.result.apply(redis_auth_conf),
            # redis_exporter's password file: address -> password.
            "exporter.json": password.result.apply(
                lambda p: exporter_passwords([f"localhost:{port}"], p)
            ),
        }
        k8s.core.v1.Secret(
            f"{name}-auth",
            metadata=meta(AUTH_SECRET, ns, labels),
            string_data=secret_data,
            opts=child,
        )
        for client_ns in args.client_namespaces:
            k8s.core.v1.Secret(
                f"{name}-auth-{client_ns}",
                metadata=meta(AUTH_SECRET, client_ns, labels),
                string_data={"password": password.result},
                opts=child,
            )

        config = k8s.core.v1.ConfigMap(
            f"{name}-config",
            metadata=meta(f"{app}-config", ns, labels),
            data={
                **{
                    f"{node.name}.conf": redis_conf(
                        node,
                        spec,
                        DATA_DIR,
                        bind=("0.0.0.0",),
                        auth_include=f"{AUTH_DIR}/auth.conf",
                    )
                    for node in spec.nodes
                },
                "bootstrap.sh": cluster_bootstrap_sh(spec, resolve_hosts=True),
            },
            opts=child,
        )
        # Nodes must resolve each other before they are ready, to form the cluster.
        service = headless_service(
            f"{name}-headless",
            app,
            ns,
            labels,
            {"redis": port, "bus": bus_port},
            child,
            publish_not_ready=True,
        )

        volumes = [
            config_map_volume("config", config.metadata.name),
            secret_volume("auth", AUTH_SECRET),
            empty_dir("tmp"),
        ]
        memory = f"{int(args.config.maxmemory_mb * 1.2) + 256}Mi"  # + replication buffers

        def redis(node: str) -> k8s.core.v1.ContainerArgs:
            return container(
                "redis",
                args.image,
                ["redis-server"],
                ("500m", memory, "2", memory),
                [
                    mount("data", DATA_DIR),
                    mount("config", CONFIG_DIR, read_only=True),
                    mount("auth", AUTH_DIR, read_only=True),
                    mount("tmp", "/tmp"),
                ],
                args=[f"{CONFIG_DIR}/{node}.conf"],  # each node its own rendered file
                ports=[
                    k8s.core.v1.ContainerPortArgs(name="redis", container_port=port),
                    k8s.core.v1.ContainerPortArgs(name="bus", container_port=bus_port),
                ],
                liveness_probe=tcp_probe("redis", period_seconds=10, failure_threshold=3),
                readiness_probe=exec_probe(
                    ["sh", "-c", f"{with_password} redis-cli -p {port} ping | grep -q PONG"],
                    period_seconds=5,
                    timeout_seconds=2,
                ),
            )

        exporter = container(
            "exporter",
            args.image,
            ["prometheus-redis-exporter"],
            ("50m", "32Mi", "200m", "64Mi"),
            [mount("auth", AUTH_DIR, read_only=True)],
            args=[
                f"-redis.addr=redis://localhost:{port}",
                f"-redis.password-file={AUTH_DIR}/exporter.json",
                "-is-cluster",
            ],
            ports=[k8s.core.v1.ContainerPortArgs(name="metrics", container_port=EXPORTER_PORT)],
            liveness_probe=http_probe("/health", "metrics"),
            readiness_probe=http_probe("/health", "metrics"),
        )
        statefulsets = [
            k8s.apps.v1.StatefulSet(
                f"{name}-{node.name}",
                metadata=meta(node.name, ns, labels),
                spec=k8s.apps.v1.StatefulSetSpecArgs(
                    service_name=service.metadata.name,
                    replicas=1,
                    selector=k8s.meta.v1.LabelSelectorArgs(
                        match_labels={"app": app, "redis-node": node.name}
                    ),
                    template=k8s.core.v1.PodTemplateSpecArgs(
                        metadata=k8s.meta.v1.ObjectMetaArgs(
                            labels={**labels, "redis-node": node.name}
                        ),
                        spec=pod(
                            [redis(node.name), exporter],
                            volumes,
                            "caches",
                            # Its zone decides whose replica it is (RedisClusterSpec.replica_of).
                            affinity=pinned_to_zone(node.zone, app, node_of_its_own=False),
                        ),
                    ),
                    volume_claim_templates=[
                        volume_claim("data", args.storage_class, args.config.storage_gb, labels)
                    ],
                ),
                opts=child,
            )
            for node in spec.nodes
        ]
        disruption_budget(f"{name}-pdb", app, ns, labels, child)
        pod_monitor(f"{name}-monitor", ns, labels, child)

        # Forms the cluster once; every later run finds it formed and only checks its health.
        bootstrap_labels = args.labels.k8s(bootstrap_app, "cache")
        bootstrap = container(
            "bootstrap",
            args.image,
            ["sh", "-c", f"{with_password} exec sh {CONFIG_DIR}/bootstrap.sh"],
            ("50m", "64Mi", "200m", "128Mi"),
            [
                mount("config", CONFIG_DIR, read_only=True),
                mount("auth", AUTH_DIR, read_only=True),
                mount("tmp", "/tmp"),
            ],
        )
        k8s.batch.v1.Job(
            f"{name}-bootstrap",
            metadata=meta(bootstrap_app, ns, bootstrap_labels),
            spec=k8s.batch.v1.JobSpecArgs(
                backoff_limit=10,
                active_deadline_seconds=1800,
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=bootstrap_labels),
                    spec=pod([bootstrap], volumes, "caches", restart_policy="OnFailure"),
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=statefulsets),
        )
        self.register_outputs({"nodes": list(self.nodes)})
