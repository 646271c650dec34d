"""The Redis cluster: sessions, carts, search results, event streams.

Six nodes (3 masters + 3 replicas in prod) as one StatefulSet on the cache pool, spread over
zones, each with its own SSD volume and its own rendered redis.conf; a bootstrap Job forms the
cluster once (and is a no-op afterwards); a generated password, given to clients as a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components.conf.redis import (
    RedisClusterSpec,
    RedisNode,
    cluster_bootstrap_sh,
    redis_auth_conf,
    redis_conf,
)
from components.kube import (
    Labels,
    container_security,
    empty_dir,
    meta,
    mount,
    placement,
    pod_security,
    resources,
    zone_spread,
)
from components.network_policy import MONITORING, Flow, Pods
from infra.config import RedisConfig
from stacks.services import DATA_ENDPOINTS, Dependency

ENDPOINT = DATA_ENDPOINTS[Dependency.REDIS]
AUTH_SECRET = "redis-auth"  # in the cache namespace and in every client namespace
EXPORTER_PORT = 9121
DATA_DIR = "/data"
CONFIG_DIR = "/etc/redis"
AUTH_DIR = "/etc/redis-auth"


@dataclass
class RedisArgs:
    config: RedisConfig
    image: pulumi.Input[str]
    labels: Labels
    client_namespaces: tuple[str, ...]
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
                RedisNode(name=f"{app}-{i}", host=f"{app}-{i}.{ENDPOINT.host}", port=port)
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
        self.flows = [
            Flow(Pods(ns, app), Pods(ns, app), (port, spec.nodes[0].cluster_bus_port)),
            Flow(Pods(ns, bootstrap_app), Pods(ns, app), (port, spec.nodes[0].cluster_bus_port)),
            Flow(MONITORING, Pods(ns, app), (EXPORTER_PORT,)),
        ]

        password = random.RandomPassword(f"{name}-password", length=40, special=False, opts=child)
        secret_data = {
            "password": password.result,
            "auth.conf": password.result.apply(redis_auth_conf),
            # redis_exporter's password file: address -> password.
            "exporter.json": password.result.apply(
                lambda p: json.dumps({f"redis://localhost:{port}": p})
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
        service = k8s.core.v1.Service(
            f"{name}-headless",
            metadata=meta(app, ns, labels),
            spec=k8s.core.v1.ServiceSpecArgs(
                cluster_ip="None",
                # Nodes must resolve each other before they are ready, to form the cluster.
                publish_not_ready_addresses=True,
                selector={"app": app},
                ports=[
                    k8s.core.v1.ServicePortArgs(name="redis", port=port, target_port="redis"),
                    k8s.core.v1.ServicePortArgs(
                        name="bus", port=spec.nodes[0].cluster_bus_port, target_port="bus"
                    ),
                ],
            ),
            opts=child,
        )

        volumes = [
            k8s.core.v1.VolumeArgs(
                name="config",
                config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=config.metadata.name),
            ),
            k8s.core.v1.VolumeArgs(
                name="auth",
                secret=k8s.core.v1.SecretVolumeSourceArgs(
                    secret_name=AUTH_SECRET, default_mode=0o440
                ),
            ),
            empty_dir("tmp"),
        ]
        memory = f"{int(args.config.maxmemory_mb * 1.2) + 256}Mi"  # maxmemory + replication buffers
        ping = k8s.core.v1.ExecActionArgs(
            command=[
                "sh",
                "-c",
                f'REDISCLI_AUTH="$(cat {AUTH_DIR}/password)" '
                f"redis-cli -p {port} ping | grep -q PONG",
            ]
        )
        redis_container = k8s.core.v1.ContainerArgs(
            name="redis",
            image=args.image,
            image_pull_policy="IfNotPresent",
            command=["redis-server"],
            args=[f"{CONFIG_DIR}/$(POD_NAME).conf"],
            env=[
                k8s.core.v1.EnvVarArgs(
                    name="POD_NAME",
                    value_from=k8s.core.v1.EnvVarSourceArgs(
                        field_ref=k8s.core.v1.ObjectFieldSelectorArgs(field_path="metadata.name")
                    ),
                )
            ],
            ports=[
                k8s.core.v1.ContainerPortArgs(name="redis", container_port=port),
                k8s.core.v1.ContainerPortArgs(
                    name="bus", container_port=spec.nodes[0].cluster_bus_port
                ),
            ],
            resources=resources("500m", memory, "2", memory),
            security_context=container_security(),
            volume_mounts=[
                mount("data", DATA_DIR),
                mount("config", CONFIG_DIR, read_only=True),
                mount("auth", AUTH_DIR, read_only=True),
                mount("tmp", "/tmp"),
            ],
            liveness_probe=k8s.core.v1.ProbeArgs(
                tcp_socket=k8s.core.v1.TCPSocketActionArgs(port="redis"),
                period_seconds=10,
                failure_threshold=3,
            ),
            readiness_probe=k8s.core.v1.ProbeArgs(exec_=ping, period_seconds=5, timeout_seconds=2),
        )
        exporter = k8s.core.v1.ContainerArgs(
            name="exporter",
            image=args.image,
            image_pull_policy="IfNotPresent",
            command=["prometheus-redis-exporter"],
            args=[
                f"-redis.addr=redis://localhost:{port}",
                f"-redis.password-file={AUTH_DIR}/exporter.json",
                "-is-cluster",
            ],
            ports=[k8s.core.v1.ContainerPortArgs(name="metrics", container_port=EXPORTER_PORT)],
            resources=resources("50m", "32Mi", "200m", "64Mi"),
            security_context=container_security(),
            volume_mounts=[mount("auth", AUTH_DIR, read_only=True)],
            liveness_probe=k8s.core.v1.ProbeArgs(
                http_get=k8s.core.v1.HTTPGetActionArgs(path="/health", port="metrics")
            ),
            readiness_probe=k8s.core.v1.ProbeArgs(
                http_get=k8s.core.v1.HTTPGetActionArgs(path="/health", port="metrics")
            ),
        )
        statefulset = k8s.apps.v1.StatefulSet(
            f"{name}-statefulset",
            metadata=meta(app, ns, labels),
            spec=k8s.apps.v1.StatefulSetSpecArgs(
                service_name=service.metadata.name,
                replicas=count,
                pod_management_policy="Parallel",
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"app": app}),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
                    spec=k8s.core.v1.PodSpecArgs(
                        automount_service_account_token=False,
                        enable_service_links=False,
                        security_context=pod_security(),
                        topology_spread_constraints=zone_spread(app),
                        containers=[redis_container, exporter],
                        volumes=volumes,
                        **placement("caches"),
                    ),
                ),
                volume_claim_templates=[
                    k8s.core.v1.PersistentVolumeClaimArgs(
                        metadata=k8s.meta.v1.ObjectMetaArgs(name="data", labels=labels),
                        spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
                            access_modes=["ReadWriteOnce"],
                            storage_class_name=args.storage_class,
                            resources=k8s.core.v1.VolumeResourceRequirementsArgs(
                                requests={"storage": f"{args.config.storage_gb}Gi"}
                            ),
                        ),
                    )
                ],
            ),
            opts=child,
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata=meta(app, ns, labels),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                max_unavailable=1, selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"app": app})
            ),
            opts=child,
        )
        k8s.apiextensions.CustomResource(
            f"{name}-monitor",
            api_version="monitoring.coreos.com/v1",
            kind="PodMonitor",
            metadata=meta(app, ns, labels),
            spec={
                "selector": {"matchLabels": {"app": app}},
                "podMetricsEndpoints": [{"port": "metrics", "interval": "15s"}],
            },
            opts=child,
        )

        bootstrap_labels = args.labels.k8s(bootstrap_app, "cache")
        k8s.batch.v1.Job(
            f"{name}-bootstrap",
            metadata=meta(bootstrap_app, ns, bootstrap_labels),
            spec=k8s.batch.v1.JobSpecArgs(
                backoff_limit=10,
                active_deadline_seconds=1800,
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=bootstrap_labels),
                    spec=k8s.core.v1.PodSpecArgs(
                        restart_policy="OnFailure",
                        automount_service_account_token=False,
                        enable_service_links=False,
                        security_context=pod_security(),
                        containers=[
                            k8s.core.v1.ContainerArgs(
                                name="bootstrap",
                                image=args.image,
                                image_pull_policy="IfNotPresent",
                                # The password reaches redis-cli through its env var, read from
                                # the mounted Secret file (never in the pod spec).
                                command=[
                                    "sh",
                                    "-c",
                                    f'REDISCLI_AUTH="$(cat {AUTH_DIR}/password)" '
                                    f"exec sh {CONFIG_DIR}/bootstrap.sh",
                                ],
                                resources=resources("50m", "64Mi", "200m", "128Mi"),
                                security_context=container_security(),
                                volume_mounts=[
                                    mount("config", CONFIG_DIR, read_only=True),
                                    mount("auth", AUTH_DIR, read_only=True),
                                    mount("tmp", "/tmp"),
                                ],
                            )
                        ],
                        volumes=volumes,
                        **placement("caches"),
                    ),
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[statefulset]),
        )
        self.register_outputs({"nodes": list(self.nodes)})
