"""PostgreSQL: a primary and streaming replicas, one per zone, behind PgPool-II.

Top to bottom: generated passwords; the rendered configuration (the same functions the local
platform runs); backups; one single-member StatefulSet per PostgreSQL server, each pinned to
its zone on the tainted database pool with its own SSD volume; then PgPool-II as a
StatefulSet whose watchdog lets exactly one pgpool decide a failover; and the CronJob that
creates the coming months' `orders` partitions.

Roles are not fixed to pods: `postgres-start.sh` decides at every start whether a member is
the primary, a new replica (pg_basebackup) or an old primary that must rejoin (pg_rewind).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random
from pydantic import Field, field_validator, model_validator

from components.backups import TLS_DIR as BACKUP_TLS_DIR
from components.backups import TLS_SECRET as BACKUP_TLS_SECRET
from components.backups import BackupConfig, BackupsArgs, PostgresBackups
from components.conf import pgbackrest, zone_of
from components.conf.pgpool import (
    PgpoolNode,
    PgpoolSettings,
    pgpool_command,
    pgpool_files,
    pgpool_secret_files,
)
from components.conf.postgres import (
    PgMember,
    PgTopology,
    PgTuning,
    PgUsers,
    WalArchive,
)
from components.conf.prometheus import postgres_exporter_queries
from components.conf.scripts import (
    POSTGRES_START_SH,
    postgres_env,
    postgres_files,
    postgres_secret_files,
)
from components.inputs import Inputs, KeyProblem, PositiveInt
from components.kube import (
    Endpoint,
    Labels,
    config_map_volume,
    container,
    cron_job,
    disruption_budget,
    empty_dir,
    env_vars,
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
    zone_spread,
)
from components.microservice import SECRETS_DIR as SERVICE_SECRETS_DIR
from components.network_policy import MONITORING, PUBLIC_INTERNET, Flow, Pods, metadata_server

ENDPOINT = Endpoint("data", "pgpool", 5432)  # the clients' view: PgPool-II
NAMESPACE = ENDPOINT.namespace
APP = "postgres"
PGPOOL = ENDPOINT.app
PORT = 5432
EXPORTER_PORT = 9187
EXPORTER_QUERIES = "exporter-queries.yaml"  # components.conf.prometheus: the replication role
APP_SECRET = "postgres-app"  # the application role's password, in every client namespace
CREDENTIALS_SECRET = "postgres-credentials"
PGPOOL_SECRET = "pgpool-credentials"
PARTITIONS_APP = "partition-maintenance"
# Where the jobs find the application role's password (a file `password` in it).
JOB_SECRET_DIR = f"{SERVICE_SECRETS_DIR}/{APP_SECRET}"
MIGRATIONS_APP = "schema-migrations"

CONF_DIR = "/etc/postgresql/conf"
SECRETS_DIR = "/etc/postgresql/secrets"
BACKREST_CONF_DIR = "/etc/pgbackrest/conf"
DATA_MOUNT = "/var/lib/postgresql/data"
RENDERED_DIR = "/etc/pgpool2-rendered"
STORAGE_CLASS = "postgres-ssd"
USERS = PgUsers()


class PgpoolConfig(Inputs):
    # 1 (no watchdog) or an odd number >= 3, so the watchdog has a quorum and exactly one
    # pgpool decides a failover.
    replicas: PositiveInt = 3
    num_init_children: PositiveInt = 50
    max_pool: PositiveInt = 4

    @field_validator("replicas")
    @classmethod
    def _quorum(cls, value: int) -> int:
        if value > 1 and value % 2 == 0:
            raise ValueError(f"expected 1 or an odd number >= 3 (watchdog quorum), got {value}")
        return value


class PostgresConfig(Inputs):
    replicas: Annotated[int, Field(ge=1, le=8)] = 3
    synchronous_standbys: Annotated[int, Field(ge=0)] = 1
    storage_gb: Annotated[int, Field(ge=10)] = 200
    cpu: str = "3"
    memory: str = "12Gi"
    partitions_ahead_months: Annotated[int, Field(ge=1, le=24)] = 3
    pgpool: PgpoolConfig = PgpoolConfig()
    backups: BackupConfig = BackupConfig()

    @model_validator(mode="after")
    def _sync(self) -> PostgresConfig:
        if self.synchronous_standbys > self.replicas:
            raise KeyProblem(
                "synchronousStandbys",
                f"expected <= replicas ({self.replicas}), got {self.synchronous_standbys}",
            )
        return self


@dataclass
class DatabaseJobs:
    """The schema migrations (a Job per set of migration files) and the partition maintenance
    (a CronJob), run from the services' image against PgPool-II as the application role."""

    migrate: tuple[str, ...]  # argv
    partitions: tuple[str, ...]  # argv
    # A job's environment by its name; the application role's password is the file
    # `JOB_SECRET_DIR/password`, and PgPool-II is at `ENDPOINT`.
    env: Callable[[str], dict[str, str]]
    migrations_digest: str  # of the migration files: a new set is a new Job


@dataclass
class PostgresArgs:
    config: PostgresConfig
    project: str
    region: str
    zones: tuple[str, ...]
    pods_cidr: str
    image: pulumi.Input[str]
    pgpool_image: pulumi.Input[str]
    service_image: pulumi.Input[str]
    labels: Labels
    gcp_labels: dict[str, str]
    client_namespaces: tuple[str, ...]
    jobs: DatabaseJobs
    deletion_protection: bool = True


class PostgresCluster(pulumi.ComponentResource):
    address: str  # host:port of PgPool-II, what the services connect to
    app_secret: str
    flows: list[Flow]
    topology: PgTopology

    def __init__(self, name: str, args: PostgresArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("platform:data:PostgresCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        cfg = args.config
        labels = args.labels.k8s(APP, "data")
        self.address = f"{ENDPOINT.host}:{ENDPOINT.port}"
        self.app_secret = APP_SECRET

        # Member i lives in zone i mod n; commits wait for standbys in other zones.
        self.topology = PgTopology(
            members=tuple(
                PgMember(
                    name=f"pg-{i}",
                    host=f"pg-{i}-0.{APP}.{NAMESPACE}.svc.cluster.local",
                    port=PORT,
                    zone=zone_of(i, args.zones),
                )
                for i in range(cfg.replicas + 1)
            ),
            data_dir=f"{DATA_MOUNT}/pgdata",
            conf_dir=CONF_DIR,
            synchronous_standbys=cfg.synchronous_standbys,
        )
        tuning = _tuning(cfg.memory)
        pgpool = PgpoolSettings(
            port=ENDPOINT.port,
            num_init_children=cfg.pgpool.num_init_children,
            max_pool=cfg.pgpool.max_pool,
            watchdog_nodes=tuple(
                PgpoolNode(
                    host=f"{PGPOOL}-{i}.{PGPOOL}-peers.{NAMESPACE}.svc.cluster.local",
                    port=ENDPOINT.port,
                )
                for i in range(cfg.pgpool.replicas)
            )
            if cfg.pgpool.replicas >= 3
            else (),
        )
        self.flows = self._flows(pgpool)

        # --- credentials ------------------------------------------------------------------------
        passwords = {
            role: random.RandomPassword(
                f"{name}-{role}-password", length=32, special=False, opts=child
            ).result
            for role in USERS.roles()
        }
        pcp_password = random.RandomPassword(
            f"{name}-pcp-password", length=32, special=False, opts=child
        ).result
        all_passwords = pulumi.Output.all(**passwords)
        k8s.core.v1.Secret(
            f"{name}-credentials",
            metadata=meta(CREDENTIALS_SECRET, NAMESPACE, labels),
            string_data={
                "pgpass": all_passwords.apply(lambda p: postgres_secret_files(USERS, p)["pgpass"]),
                "superuser-password": passwords[USERS.superuser],
            },
            opts=child,
        )
        for client_ns in dict.fromkeys((*args.client_namespaces, NAMESPACE)):
            k8s.core.v1.Secret(
                f"{name}-app-{client_ns}",
                metadata=meta(APP_SECRET, client_ns, labels),
                string_data={"password": passwords[USERS.app], "username": USERS.app},
                opts=child,
            )

        # --- backups ----------------------------------------------------------------------------
        backups = PostgresBackups(
            f"{name}-backups",
            BackupsArgs(
                project=args.project,
                region=args.region,
                namespace=NAMESPACE,
                members=self.topology.members,
                data_dir=self.topology.data_dir,
                image=args.image,
                config=cfg.backups,
                labels=args.labels,
                gcp_labels=args.gcp_labels,
                writer_accounts=(APP,),
                deletion_protection=args.deletion_protection,
            ),
            child,
        )

        # --- the PostgreSQL servers -------------------------------------------------------------
        backrest_conf = f"{BACKREST_CONF_DIR}/pgbackrest.conf"
        config = k8s.core.v1.ConfigMap(
            f"{name}-config",
            metadata=meta(f"{APP}-config", NAMESPACE, labels),
            data={
                **postgres_files(
                    self.topology,
                    USERS,
                    client_cidrs=(args.pods_cidr, "127.0.0.1/32"),
                    tuning=tuning,
                    archive=WalArchive(
                        archive_command=pgbackrest.archive_command(backrest_conf),
                        restore_command=pgbackrest.restore_command(backrest_conf),
                    ),
                ),
                "pgbackrest.conf": backups.server_config,
                EXPORTER_QUERIES: postgres_exporter_queries(),
            },
            opts=child,
        )
        account = k8s.core.v1.ServiceAccount(
            f"{name}-account",
            metadata=meta(
                APP,
                NAMESPACE,
                labels,
                annotations={"iam.gke.io/gcp-service-account": backups.writer_email},
            ),
            automount_service_account_token=False,
            opts=child,
        )
        # Members find each other (and pgpool finds them) before they are ready.
        headless = headless_service(
            f"{name}-headless",
            APP,
            NAMESPACE,
            labels,
            {"postgres": PORT, "pgbackrest": pgbackrest.TLS_PORT},
            child,
            publish_not_ready=True,
        )
        k8s.storage.v1.StorageClass(
            f"{name}-ssd",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=STORAGE_CLASS, labels=labels),
            provisioner="pd.csi.storage.gke.io",
            parameters={"type": "pd-ssd"},
            # Bind where the pod is scheduled (its zone), keep the disk if the claim goes.
            volume_binding_mode="WaitForFirstConsumer",
            reclaim_policy="Retain",
            allow_volume_expansion=True,
            opts=child,
        )
        members = [
            self._member(name, member, args, labels, config, account, headless)
            for member in self.topology.members
        ]
        backups.stanza_job(f"{name}-backups", members)

        # --- PgPool-II --------------------------------------------------------------------------
        self._pgpool(name, args, pgpool, tuning, all_passwords, pcp_password, members)
        self._jobs(name, args, members)
        self.register_outputs({"address": self.address})

    def _flows(self, pgpool: PgpoolSettings) -> list[Flow]:
        me, pool = Pods(NAMESPACE, APP), Pods(NAMESPACE, PGPOOL)
        backup = Pods(NAMESPACE, "pgbackrest")
        flows = [
            Flow(pool, me, (PORT,)),
            Flow(me, me, (PORT,)),  # replication, pg_basebackup, pg_rewind, role discovery
            Flow(backup, me, (pgbackrest.TLS_PORT,)),
            # WAL archive and backups to Cloud Storage, as the Google account Workload
            # Identity maps their Kubernetes accounts to.
            Flow(me, PUBLIC_INTERNET, (443,)),
            Flow(backup, PUBLIC_INTERNET, (443,)),
            *metadata_server(me),
            *metadata_server(backup),
            *(
                Flow(Pods(NAMESPACE, job), pool, (ENDPOINT.port,))
                for job in (PARTITIONS_APP, MIGRATIONS_APP)
            ),
            Flow(MONITORING, me, (EXPORTER_PORT,)),
        ]
        if pgpool.uses_watchdog:
            node = pgpool.watchdog_nodes[0]
            flows += [
                Flow(pool, pool, (node.wd_port,)),
                Flow(pool, pool, (node.heartbeat_port,), protocol="UDP"),
            ]
        return flows

    def _member(
        self,
        name: str,
        member: PgMember,
        args: PostgresArgs,
        labels: dict[str, str],
        config: k8s.core.v1.ConfigMap,
        account: k8s.core.v1.ServiceAccount,
        headless: k8s.core.v1.Service,
    ) -> k8s.apps.v1.StatefulSet:
        cfg = args.config
        pod_labels = {**labels, "member": member.name}
        socket, spool = self.topology.socket_dir, "/var/spool/pgbackrest"
        ready = ["pg_isready", "-q", "-h", socket, "-p", str(PORT)]
        postgres = container(
            "postgres",
            args.image,
            ["sh", f"{CONF_DIR}/{POSTGRES_START_SH}"],
            (cfg.cpu, cfg.memory, cfg.cpu, cfg.memory),
            [
                mount("data", DATA_MOUNT),
                mount("config", CONF_DIR, read_only=True),
                mount("config", BACKREST_CONF_DIR, read_only=True),
                mount("secrets", SECRETS_DIR, read_only=True),
                mount("socket", socket),
                mount("spool", spool),
                mount("shm", "/dev/shm"),
                mount("tmp", "/tmp"),
            ],
            env=env_vars(postgres_env(self.topology, USERS, member, f"{SECRETS_DIR}/pgpass")),
            ports=[k8s.core.v1.ContainerPortArgs(name="postgres", container_port=PORT)],
            # Cloning a large replica takes long: the startup probe allows it, then liveness
            # (the server accepts TCP) and readiness (it accepts queries) take over.
            startup_probe=exec_probe(ready, period_seconds=10, failure_threshold=360),
            liveness_probe=tcp_probe("postgres", period_seconds=10, failure_threshold=6),
            readiness_probe=exec_probe(ready, period_seconds=5, failure_threshold=2),
        )
        backrest = container(
            "pgbackrest",
            args.image,
            ["pgbackrest", f"--config={BACKREST_CONF_DIR}/pgbackrest.conf", "server"],
            ("100m", "128Mi", "2", "1Gi"),
            [
                mount("data", DATA_MOUNT),
                mount("config", BACKREST_CONF_DIR, read_only=True),
                mount("tls", BACKUP_TLS_DIR, read_only=True),
                mount("socket", socket),
                mount("spool", spool),
                mount("tmp", "/tmp"),
            ],
            # A backup logs in to the server as the superuser: with the private copy of the
            # passwords postgres-start.sh keeps in the shared socket directory (mode 0600).
            env=[
                k8s.core.v1.EnvVarArgs(name="PGPASSFILE", value=f"{socket}/.pgpass.{member.name}")
            ],
            ports=[
                k8s.core.v1.ContainerPortArgs(name="pgbackrest", container_port=pgbackrest.TLS_PORT)
            ],
            liveness_probe=tcp_probe("pgbackrest"),
            readiness_probe=tcp_probe("pgbackrest", period_seconds=10),
        )
        exporter = container(
            "exporter",
            args.image,
            ["prometheus-postgres-exporter", f"--extend.query-path={CONF_DIR}/{EXPORTER_QUERIES}"],
            ("50m", "64Mi", "250m", "128Mi"),
            [
                mount("secrets", SECRETS_DIR, read_only=True),
                mount("config", CONF_DIR, read_only=True),
            ],
            env=env_vars(
                {
                    "DATA_SOURCE_URI": f"localhost:{PORT}/postgres?sslmode=disable",
                    "DATA_SOURCE_USER": USERS.superuser,
                    "DATA_SOURCE_PASS_FILE": f"{SECRETS_DIR}/superuser-password",
                }
            ),
            ports=[k8s.core.v1.ContainerPortArgs(name="metrics", container_port=EXPORTER_PORT)],
            liveness_probe=http_probe("/", "metrics"),
            readiness_probe=http_probe("/", "metrics", period_seconds=15),
        )
        spec = pod(
            [postgres, backrest, exporter],
            [
                config_map_volume("config", config.metadata.name),
                secret_volume("secrets", CREDENTIALS_SECRET),
                secret_volume("tls", f"{BACKUP_TLS_SECRET}-server"),
                empty_dir("socket", "1Mi"),
                empty_dir("spool", "2Gi"),
                empty_dir("tmp", "1Gi"),
                empty_dir("shm", "1Gi", memory=True),
            ],
            "databases",
            service_account_name=account.metadata.name,
            termination_grace_period_seconds=120,  # time to checkpoint and stop cleanly
            affinity=pinned_to_zone(member.zone, APP),
        )
        return k8s.apps.v1.StatefulSet(
            f"{name}-{member.name}",
            metadata=meta(member.name, NAMESPACE, pod_labels),
            spec=k8s.apps.v1.StatefulSetSpecArgs(
                service_name=headless.metadata.name,
                replicas=1,
                selector=k8s.meta.v1.LabelSelectorArgs(
                    match_labels={"app": APP, "member": member.name}
                ),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=pod_labels), spec=spec
                ),
                volume_claim_templates=[
                    volume_claim("data", STORAGE_CLASS, cfg.storage_gb, pod_labels)
                ],
                # Deleting or scaling down a member never deletes its data.
                persistent_volume_claim_retention_policy=k8s.apps.v1.StatefulSetPersistentVolumeClaimRetentionPolicyArgs(
                    when_deleted="Retain", when_scaled="Retain"
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self, protect=args.deletion_protection),
        )

    def _pgpool(
        self,
        name: str,
        args: PostgresArgs,
        settings: PgpoolSettings,
        tuning: PgTuning,
        passwords: pulumi.Output[dict[str, str]],
        pcp_password: pulumi.Output[str],
        members: list[k8s.apps.v1.StatefulSet],
    ) -> None:
        child = pulumi.ResourceOptions(parent=self)
        labels = args.labels.k8s(PGPOOL, "data")
        files = pgpool_files(
            self.topology, USERS, settings, client_cidrs=(args.pods_cidr,), tuning=tuning
        )
        config = k8s.core.v1.ConfigMap(
            f"{name}-pgpool-config",
            metadata=meta(f"{PGPOOL}-config", NAMESPACE, labels),
            data=files,
            opts=child,
        )
        k8s.core.v1.Secret(
            f"{name}-pgpool-credentials",
            metadata=meta(PGPOOL_SECRET, NAMESPACE, labels),
            string_data=pulumi.Output.all(passwords, pcp_password).apply(
                lambda v: pgpool_secret_files(USERS, settings, v[0], v[1])
            ),
            opts=child,
        )
        k8s.core.v1.Service(
            f"{name}-{PGPOOL}",
            metadata=meta(PGPOOL, NAMESPACE, labels),
            spec=k8s.core.v1.ServiceSpecArgs(
                selector={"app": PGPOOL},
                ports=[
                    k8s.core.v1.ServicePortArgs(
                        name="postgres", port=ENDPOINT.port, target_port="postgres"
                    )
                ],
            ),
            opts=child,
        )
        # Watchdog peers meet before they are ready.
        headless_service(
            f"{name}-{PGPOOL}-peers",
            f"{PGPOOL}-peers",
            NAMESPACE,
            labels,
            {"postgres": ENDPOINT.port},
            child,
            publish_not_ready=True,
        )
        ports = [k8s.core.v1.ContainerPortArgs(name="postgres", container_port=ENDPOINT.port)]
        if settings.uses_watchdog:
            node = settings.watchdog_nodes[0]
            ports += [
                k8s.core.v1.ContainerPortArgs(name="watchdog", container_port=node.wd_port),
                k8s.core.v1.ContainerPortArgs(
                    name="heartbeat", container_port=node.heartbeat_port, protocol="UDP"
                ),
            ]
        # The conf dir is writable because pgpool_node_id differs per pod: copy the rendered
        # files in, write this pod's watchdog id from its ordinal, then exec pgpool.
        start = (
            f"cp {RENDERED_DIR}/* {settings.conf_dir}/ && "
            f'echo "${{HOSTNAME##*-}}" > {settings.conf_dir}/pgpool_node_id && '
            f"exec {' '.join(pgpool_command(settings))}"
        )
        pgpool = container(
            PGPOOL,
            args.pgpool_image,
            ["sh", "-c", start],
            ("500m", "512Mi", "2", "1Gi"),
            [
                mount("rendered", RENDERED_DIR, read_only=True),
                mount("conf", settings.conf_dir),
                mount("secrets", settings.secrets_dir, read_only=True),
                mount("run", settings.run_dir),
                mount("log", settings.log_dir),
                mount("tmp", "/tmp"),
            ],
            ports=ports,
            liveness_probe=tcp_probe("postgres", period_seconds=10, failure_threshold=3),
            readiness_probe=exec_probe(
                ["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(ENDPOINT.port)], period_seconds=5
            ),
        )
        k8s.apps.v1.StatefulSet(
            f"{name}-pgpool",
            metadata=meta(PGPOOL, NAMESPACE, labels),
            spec=k8s.apps.v1.StatefulSetSpecArgs(
                service_name=f"{PGPOOL}-peers",
                replicas=settings.pgpool_count,
                pod_management_policy="Parallel",
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"app": PGPOOL}),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
                    spec=pod(
                        [pgpool],
                        [
                            config_map_volume("rendered", config.metadata.name),
                            secret_volume("secrets", PGPOOL_SECRET),
                            empty_dir("conf", "1Mi"),
                            empty_dir("run", "1Mi"),
                            empty_dir("log", "16Mi"),
                            empty_dir("tmp", "64Mi"),
                        ],
                        "databases",
                        topology_spread_constraints=zone_spread(PGPOOL),
                    ),
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=members),
        )
        disruption_budget(f"{name}-pgpool-pdb", PGPOOL, NAMESPACE, labels, child)
        pod_monitor(f"{name}-monitor", NAMESPACE, args.labels.k8s(APP, "data"), child)

    def _jobs(self, name: str, args: PostgresArgs, members: list[k8s.apps.v1.StatefulSet]) -> None:
        """The schema migrations (a Job per set of migration files) and the monthly `orders`
        partitions (a CronJob), both through PgPool-II as the application role, from the
        services' image and with the services' settings code."""
        jobs = args.jobs

        def spec(app: str, argv: tuple[str, ...], restart: str) -> k8s.core.v1.PodSpecArgs:
            job = container(
                app,
                args.service_image,
                list(argv),
                ("50m", "64Mi", "500m", "256Mi"),
                [mount("credentials", JOB_SECRET_DIR, read_only=True), mount("tmp", "/tmp")],
                env=env_vars(jobs.env(app)),
            )
            return pod(
                [job],
                [secret_volume("credentials", APP_SECRET), empty_dir("tmp")],
                "databases",  # the data tier's jobs stay on its pool
                restart_policy=restart,
            )

        # A new set of migration files is a new Job (its name carries their digest).
        digest = jobs.migrations_digest[:10]
        labels = args.labels.k8s(MIGRATIONS_APP, "data")
        k8s.batch.v1.Job(
            f"{name}-migrations-{digest}",
            metadata=meta(f"{MIGRATIONS_APP}-{digest}", NAMESPACE, labels),
            spec=k8s.batch.v1.JobSpecArgs(
                backoff_limit=10,
                active_deadline_seconds=1800,
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
                    spec=spec(MIGRATIONS_APP, jobs.migrate, "OnFailure"),
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=members),
        )
        labels = args.labels.k8s(PARTITIONS_APP, "data")
        cron_job(
            f"{name}-partitions",
            meta(PARTITIONS_APP, NAMESPACE, labels),
            "17 3 * * *",  # daily: a missed run is caught up the next day
            labels,
            spec(PARTITIONS_APP, jobs.partitions, "Never"),
            deadline_seconds=600,
            backoff_limit=3,
            opts=pulumi.ResourceOptions(parent=self),
        )


def _tuning(memory: str) -> PgTuning:
    """Size PostgreSQL's memory settings to the pod's memory (25 % shared buffers)."""
    units = {"Gi": 1024, "Mi": 1, "G": 1000, "M": 1}
    for suffix, factor in units.items():
        if memory.endswith(suffix):
            total_mb = int(float(memory[: -len(suffix)]) * factor)
            break
    else:
        raise ValueError(f"memory {memory!r}: expected a quantity in Mi or Gi")
    return dataclasses.replace(
        PgTuning(),
        shared_buffers=f"{total_mb // 4}MB",
        effective_cache_size=f"{total_mb * 3 // 4}MB",
        maintenance_work_mem=f"{min(1024, max(64, total_mb // 16))}MB",
    )
