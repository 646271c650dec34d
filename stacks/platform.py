"""What a stack deploys: the whole platform, composed from the components.

Reads like the architecture diagram: network, cluster and node pools, images, namespaces,
the data tier (PostgreSQL behind PgPool-II, Redis cluster, Memcached), the services and the
gateway from the service table, the network policies generated from who talks to whom, and
monitoring. Sizes come from the stack's config; everything else from the service table.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pulumi

from components import postgres
from components.cluster import GkeCluster, GkeClusterArgs
from components.images import ImagesArgs, PlatformImages
from components.kube import Labels
from components.memcached import Memcached, MemcachedArgs
from components.microservice import SECRETS_DIR, Microservice, MicroserviceArgs
from components.monitoring import Monitoring, MonitoringArgs
from components.namespaces import Namespaces, NamespacesArgs
from components.network import Network, NetworkArgs
from components.network_policy import NetworkPolicies, NetworkPoliciesArgs
from components.postgres import ENDPOINT as POSTGRES_ENDPOINT
from components.postgres import DatabaseJobs, PostgresArgs, PostgresCluster
from components.redis import ENDPOINT as REDIS_ENDPOINT
from components.redis import RedisArgs, RedisCluster
from components.secrets import SecretCopies, SecretCopiesArgs, SharedSecret, SharedSecretArgs
from components.volume_backups import VolumeBackups, VolumeBackupsArgs
from services.kit.migrate import load as load_migrations
from stacks.alerts import ALERTS, RECORDINGS
from stacks.config import StackConfig
from stacks.dashboards import DASHBOARDS
from stacks.gateway import JWT_KEY_ENV, kubernetes_config
from stacks.network import service_flows
from stacks.services import (
    OUTSIDE_PARTIES,
    SERVICE_TABLE,
    Dependency,
    Service,
    callers_of,
    namespaces,
    users_of,
)
from stacks.wiring import (
    Addresses,
    SecretFiles,
    database_environment,
    job_environment,
    service_environment,
)

NAME = "shop"


class Platform:
    def __init__(self, config: StackConfig, secrets: dict[str, Any]):
        labels = Labels(config.environment, config.cost_center)
        gcp_labels = labels.gcp("platform", "infrastructure")

        # --- Google Cloud: network, cluster, node pools, images --------------------------------
        self.network = Network(
            NAME,
            NetworkArgs(
                region=config.region,
                subnet_cidr=config.network.subnet_cidr,
                pods_cidr=config.network.pods_cidr,
                services_cidr=config.network.services_cidr,
            ),
        )
        self.cluster = GkeCluster(
            NAME,
            GkeClusterArgs(
                project=config.gcp_project,
                region=config.region,
                zones=config.zones,
                network=self.network,
                master_cidr=config.network.master_cidr,
                master_authorized_networks=tuple(
                    (n.name, n.cidr) for n in config.network.master_authorized_networks
                ),
                cluster=config.cluster,
                node_pools=config.node_pools,
                labels=gcp_labels,
                monthly_budget_usd=config.monthly_budget_usd,
            ),
        )
        self.images = PlatformImages(
            NAME,
            ImagesArgs(
                project=config.gcp_project,
                region=config.region,
                labels=gcp_labels,
                prebuilt=config.images.prebuilt(),
            ),
        )

        # --- inside the cluster ----------------------------------------------------------------
        k8s = pulumi.ResourceOptions(provider=self.cluster.provider)
        spaces = Namespaces("namespaces", NamespacesArgs(namespaces(), labels), k8s)
        in_cluster = pulumi.ResourceOptions(
            provider=self.cluster.provider, depends_on=list(spaces.resources.values())
        )

        self.postgres = PostgresCluster(
            "postgres",
            PostgresArgs(
                config=config.postgres,
                project=config.gcp_project,
                region=config.region,
                zones=config.zones,
                pods_cidr=config.network.pods_cidr,
                image=self.images.refs["postgres"],
                pgpool_image=self.images.refs["pgpool"],
                service_image=self.images.refs["service"],
                labels=labels,
                gcp_labels=labels.gcp("postgres", "data"),
                client_namespaces=_namespaces_of(Dependency.POSTGRES),
                jobs=database_jobs(config),
                deletion_protection=config.cluster.deletion_protection,
            ),
            in_cluster,
        )
        self.redis = RedisCluster(
            "redis",
            RedisArgs(
                config=config.redis,
                image=self.images.refs["redis"],
                labels=labels,
                client_namespaces=_namespaces_of(Dependency.REDIS),
                zones=config.zones,
            ),
            in_cluster,
        )
        self.memcached = Memcached(
            "memcached",
            MemcachedArgs(
                config=config.memcached, image=self.images.refs["memcached"], labels=labels
            ),
            in_cluster,
        )
        # The stateful namespaces' volumes, Secrets and manifests (Backup for GKE).
        VolumeBackups(
            "volumes",
            VolumeBackupsArgs(
                cluster_id=self.cluster.cluster.id,
                region=config.region,
                namespaces=(POSTGRES_ENDPOINT.namespace, REDIS_ENDPOINT.namespace),
                config=config.volume_backups,
                gcp_labels=labels.gcp("volume-backups", "data"),
            ),
        )

        addresses = Addresses(
            database=self.postgres.address,
            redis_nodes=self.redis.nodes,
            memcached_nodes=self.memcached.nodes,
            services={
                s.name: f"http://{s.name}.{s.namespace}.svc.cluster.local:{s.port}"
                for s in SERVICE_TABLE
            },
            external=config.outside_urls(),
        )
        # Each outside party's key, only where the services that call it run.
        outside_keys = {
            party: SecretCopies(
                f"{party}-api-key",
                SecretCopiesArgs(
                    values={"key": secrets[f"{party}ApiKey"]},
                    namespaces=tuple(dict.fromkeys(s.namespace for s in callers_of(party))),
                    labels=labels,
                ),
                in_cluster,
            ).name
            for party in OUTSIDE_PARTIES
        }
        # Every workload checks access tokens: the services and the gateway.
        signing = SharedSecret(
            "jwt-signing",
            SharedSecretArgs(
                namespaces=tuple(dict.fromkeys(s.namespace for s in SERVICE_TABLE)),
                labels=labels,
            ),
            in_cluster,
        )
        # The reset key and the relay's password: only where the mail senders run (the reset
        # key is what keeps every other workload from rebuilding reset tokens from events).
        senders = tuple(dict.fromkeys(s.namespace for s in SERVICE_TABLE if s.sends_mail))
        reset_key = SharedSecret(
            "password-reset-key", SharedSecretArgs(namespaces=senders, labels=labels), in_cluster
        )
        smtp = SecretCopies(
            "smtp",
            SecretCopiesArgs({"password": secrets["smtpPassword"]}, senders, labels),
            in_cluster,
        ).name
        secret_files = SecretFiles(
            database_password=f"{SECRETS_DIR}/{self.postgres.app_secret}/password",
            redis_password=f"{SECRETS_DIR}/{self.redis.auth_secret}/password",
            jwt_secret=f"{SECRETS_DIR}/{signing.name}/{signing.key}",
            reset_key=f"{SECRETS_DIR}/{reset_key.name}/{reset_key.key}",
            smtp_password=f"{SECRETS_DIR}/{smtp}/password",
            external_keys={
                party: f"{SECRETS_DIR}/{secret}/key" for party, secret in outside_keys.items()
            },
        )
        self.services: dict[str, Microservice] = {}
        for svc in SERVICE_TABLE:
            low, high = config.replicas_for(svc.name)
            secrets_needed = (
                tuple(
                    secret
                    for dependency, secret in (
                        (Dependency.POSTGRES, self.postgres.app_secret),
                        (Dependency.REDIS, self.redis.auth_secret),
                    )
                    if dependency in svc.needs
                )
                + ((signing.name,) if svc.image == "service" else ())
                + tuple(outside_keys[party] for party in svc.outside)
                + ((reset_key.name, smtp) if svc.sends_mail else ())
            )
            self.services[svc.name] = Microservice(
                svc.name,
                MicroserviceArgs(
                    workload=svc.workload,
                    image=self.images.refs[svc.image],
                    min_replicas=low,
                    max_replicas=high,
                    labels=labels,
                    env=service_environment(
                        svc,
                        config.environment,
                        addresses,
                        secret_files,
                        config.cache_ttl,
                        database_pool=svc.database_connections,
                        smtp=config.smtp,
                    ),
                    secrets=secrets_needed,
                    **gateway_files(svc, signing),
                    public_source_ranges=config.network.gateway_source_ranges,
                ),
                in_cluster,
            )

        NetworkPolicies(
            "network-policies",
            NetworkPoliciesArgs(
                namespaces=namespaces(),
                flows=[
                    *service_flows(mail_port=config.smtp.port),
                    *self.postgres.flows,
                    *self.redis.flows,
                    *self.memcached.flows,
                    *Monitoring.flows(config.network.master_cidr, config.network.subnet_cidr),
                ],
                labels=labels,
            ),
            in_cluster,
        )
        Monitoring(
            "monitoring",
            MonitoringArgs(
                labels=labels,
                alerts=ALERTS,
                recordings=RECORDINGS,
                custom_metrics=tuple(
                    s.scaling.custom_metric for s in SERVICE_TABLE if s.scaling.custom_metric
                ),
                pagerduty_routing_key=secrets["pagerdutyRoutingKey"],
                slack_webhook_url=secrets["slackWebhookUrl"],
                slack_channel=config.alerting.slack_channel,
                business_hours_time_zone=config.alerting.business_hours_time_zone,
                dashboards=DASHBOARDS,
            ),
            in_cluster,
        )

        gateway = self.services["gateway"].service
        self.gateway_address = gateway.status.apply(
            lambda s: (s.load_balancer.ingress or [None])[0].ip if s and s.load_balancer else None
        )


def database_jobs(config: StackConfig) -> DatabaseJobs:
    """The data tier's jobs: the services' migrations and partition maintenance, with the
    services' settings shape (stacks.wiring), through PgPool-II."""
    database = database_environment(
        f"{postgres.ENDPOINT.host}:{postgres.ENDPOINT.port}",
        f"{postgres.JOB_SECRET_DIR}/password",
    )
    ahead = str(config.postgres.partitions_ahead_months)
    return DatabaseJobs(
        migrate=("python", "-m", "services.kit.migrate"),
        partitions=("python", "-m", "services.maintenance.partitions", "--ahead", ahead),
        env=lambda job: job_environment(job, config.environment, database),
        migrations_digest=hashlib.sha256(
            "".join(m.checksum for m in load_migrations()).encode()
        ).hexdigest(),
    )


def gateway_files(svc: Service, signing: SharedSecret) -> dict[str, Any]:
    """The gateway's rendered haproxy.cfg, mounted where its command reads it, and the token
    signing key in the variable the config names."""
    if svc.image != "gateway":
        return {}
    path, files = kubernetes_config()
    return {
        "config_files": files,
        "config_path": path,
        "secret_env": {JWT_KEY_ENV: (signing.name, signing.key)},
    }


def _namespaces_of(dependency: Dependency) -> tuple[str, ...]:
    """Namespaces whose services need a backend: its client Secret must exist there."""
    return tuple(dict.fromkeys(s.namespace for s in users_of(dependency)))
