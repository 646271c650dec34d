"""PostgreSQL backups: GCS buckets, the identity that writes to them, and the backup schedule.

WAL is archived continuously by every PostgreSQL server (pgBackRest `archive-push`); a daily
full and a 6-hourly incremental backup run as CronJobs that reach the servers' pgBackRest TLS
endpoints. Together they give the seed's 7-day point-in-time recovery, in a bucket of the
cluster's region.

The bucket's lifecycle follows what pgBackRest keeps there, not a calendar of its own:
pgBackRest itself expires backups and WAL past the retention, and rewrites its info files on
every backup. Everything in the primary bucket is gone within days, so it stays STANDARD
(Nearline's 30-day minimum storage would bill for objects deleted after a week, and a restore
would pay to read them); the lifecycle only drops the old versions versioning keeps.

With `secondary_region` (prod), a second repository in a bucket of that region receives every
WAL segment too (asynchronously, like the first) and a weekly full backup, kept
`secondary_days` (90: Coldline's minimum storage, so nothing is deleted early) in COLDLINE,
its WAL only for the newest full: a region lost still leaves a restore to minutes ago, and
the older weekly copies restore to the moment they finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pulumi
import pulumi_kubernetes as k8s
import pulumi_tls as tls
from pulumi_gcp import serviceaccount, storage
from pydantic import Field, model_validator

from components.conf import pgbackrest
from components.conf.postgres import PgMember
from components.inputs import CronSchedule, Inputs, KeyProblem, PositiveInt
from components.kube import (
    Labels,
    config_map_volume,
    container,
    cron_job,
    empty_dir,
    meta,
    mount,
    pod,
    secret_volume,
)

BACKUP_APP = "pgbackrest"
TLS_SECRET = "pgbackrest-tls"
TLS_DIR = "/etc/pgbackrest/tls"
CONFIG_DIR = "/etc/pgbackrest/conf"


COLDLINE_MINIMUM_DAYS = 90  # GCS bills a Coldline object for at least this long


class BackupConfig(Inputs):
    full_schedule: CronSchedule = "0 2 * * *"  # daily at 02:00 UTC
    incremental_schedule: CronSchedule = "0 */6 * * *"  # every 6 hours
    pitr_days: PositiveInt = 7
    # The cross-region copy (None: none): a bucket in this region, a weekly full kept there.
    secondary_region: str | None = Field(default=None, pattern=r"^[a-z]+-[a-z]+\d$")
    secondary_schedule: CronSchedule = "0 3 * * 0"  # Sundays at 03:00 UTC
    secondary_days: PositiveInt = COLDLINE_MINIMUM_DAYS

    @model_validator(mode="after")
    def _coldline(self) -> BackupConfig:
        if self.secondary_days < COLDLINE_MINIMUM_DAYS:
            raise KeyProblem(
                "secondaryDays",
                f"expected >= {COLDLINE_MINIMUM_DAYS} (Coldline bills every object for "
                f"{COLDLINE_MINIMUM_DAYS} days: deleting sooner saves nothing), "
                f"got {self.secondary_days}",
            )
        return self


@dataclass
class BackupsArgs:
    project: str
    region: str
    namespace: str
    members: tuple[PgMember, ...]
    data_dir: str
    image: pulumi.Input[str]
    config: BackupConfig
    labels: Labels
    gcp_labels: dict[str, str]
    # Kubernetes service accounts (in `namespace`) that write to the bucket: the servers.
    writer_accounts: tuple[str, ...]
    deletion_protection: bool = True


class PostgresBackups(pulumi.ComponentResource):
    bucket: storage.Bucket
    server_config: str  # pgbackrest.conf for the PostgreSQL servers
    tls_secret: str

    def __init__(self, name: str, args: BackupsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("platform:data:PostgresBackups", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ns = args.namespace
        labels = args.labels.k8s(BACKUP_APP, "data")
        cfg = args.config

        self.bucket = self._bucket(
            f"{name}-bucket",
            f"{args.project}-pg-backups",
            args.region,
            "STANDARD",
            cfg.pitr_days,
            args,
        )
        # The cross-region copy: kept as long as Coldline bills for anyway.
        self.secondary_bucket = (
            self._bucket(
                f"{name}-secondary-bucket",
                f"{args.project}-pg-backups-{cfg.secondary_region}",
                cfg.secondary_region,
                "COLDLINE",
                cfg.secondary_days,
                args,
            )
            if cfg.secondary_region
            else None
        )

        # One Google identity for everything that writes backups, bound through Workload
        # Identity to the Kubernetes service accounts: no keys anywhere.
        writer = serviceaccount.Account(
            f"{name}-writer", account_id="pg-backups", display_name="PostgreSQL backups", opts=child
        )
        for suffix, bucket in (("", self.bucket), ("-secondary", self.secondary_bucket)):
            if bucket is not None:
                storage.BucketIAMMember(
                    f"{name}-writer-objects{suffix}",
                    bucket=bucket.name,
                    role="roles/storage.objectAdmin",
                    member=writer.email.apply(lambda e: f"serviceAccount:{e}"),
                    opts=child,
                )
        accounts = (*args.writer_accounts, BACKUP_APP)
        for account in accounts:
            serviceaccount.IAMMember(
                f"{name}-wi-{account}",
                service_account_id=writer.name,
                role="roles/iam.workloadIdentityUser",
                member=f"serviceAccount:{args.project}.svc.id.goog[{ns}/{account}]",
                opts=child,
            )
        job_account = k8s.core.v1.ServiceAccount(
            f"{name}-account",
            metadata=meta(
                BACKUP_APP, ns, labels, annotations={"iam.gke.io/gcp-service-account": writer.email}
            ),
            automount_service_account_token=False,
            opts=child,
        )
        self.writer_email = writer.email

        # TLS between the backup jobs and the servers' pgBackRest endpoints.
        self.tls_secret = TLS_SECRET
        self._certificates(name, args, labels, child)

        repo = pgbackrest.Repository(kind="gcs", bucket=f"{args.project}-pg-backups")
        secondary = (
            (
                pgbackrest.Repository(
                    kind="gcs", bucket=f"{args.project}-pg-backups-{cfg.secondary_region}"
                ),
                pgbackrest.Retention(full_days=cfg.secondary_days, wal_for_newest_fulls=1),
            )
            if cfg.secondary_region
            else None
        )
        tls_paths = pgbackrest.Tls(
            ca_file=f"{TLS_DIR}/ca.crt",
            cert_file=f"{TLS_DIR}/tls.crt",
            key_file=f"{TLS_DIR}/tls.key",
        )
        retention = pgbackrest.Retention(full_days=cfg.pitr_days)
        self.server_config = pgbackrest.server_conf(
            args.members[0],
            args.data_dir,
            "/var/run/postgresql",
            repo,
            tls_paths,
            retention,
            secondary=secondary,
        )
        self._image, self._namespace, self._labels = args.image, ns, labels
        self._job_account = job_account
        self._job_config = k8s.core.v1.ConfigMap(
            f"{name}-job-config",
            metadata=meta(f"{BACKUP_APP}-job", ns, labels),
            data={
                "pgbackrest.conf": pgbackrest.backup_job_conf(
                    args.members, args.data_dir, repo, tls_paths, retention, secondary=secondary
                )
            },
            opts=child,
        )
        schedules = [
            ("full", "full", cfg.full_schedule, 1),
            ("incr", "incr", cfg.incremental_schedule, 1),
        ]
        if secondary:
            schedules.append(("secondary", "full", cfg.secondary_schedule, 2))
        for job, kind, schedule, repo_number in schedules:
            self._cron_job(name, job, kind, repo_number, schedule, args, labels, child)
        self.register_outputs({"bucket": self.bucket.url})

    def _certificates(
        self, name: str, args: BackupsArgs, labels: dict[str, str], child: pulumi.ResourceOptions
    ) -> None:
        ca_key = tls.PrivateKey(f"{name}-ca-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        ca = tls.SelfSignedCert(
            f"{name}-ca",
            private_key_pem=ca_key.private_key_pem,
            is_ca_certificate=True,
            validity_period_hours=5 * 365 * 24,
            allowed_uses=["cert_signing", "crl_signing"],
            subject=tls.SelfSignedCertSubjectArgs(common_name="pgbackrest-ca", organization="shop"),
            opts=child,
        )

        def signed(role: str, common_name: str, dns_names: list[str], uses: list[str]) -> tuple:
            key = tls.PrivateKey(
                f"{name}-{role}-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child
            )
            request = tls.CertRequest(
                f"{name}-{role}-csr",
                private_key_pem=key.private_key_pem,
                dns_names=dns_names,
                subject=tls.CertRequestSubjectArgs(common_name=common_name, organization="shop"),
                opts=child,
            )
            cert = tls.LocallySignedCert(
                f"{name}-{role}-cert",
                cert_request_pem=request.cert_request_pem,
                ca_private_key_pem=ca_key.private_key_pem,
                ca_cert_pem=ca.cert_pem,
                validity_period_hours=365 * 24,
                early_renewal_hours=30 * 24,  # `pulumi up` in the last month renews it
                allowed_uses=["digital_signature", "key_encipherment", *uses],
                opts=child,
            )
            return key, cert

        server_key, server_cert = signed(
            "server", "pgbackrest-server", [m.host for m in args.members], ["server_auth"]
        )
        client_key, client_cert = signed("client", "pgbackrest-client", [], ["client_auth"])
        for role, key, cert in (
            ("server", server_key, server_cert),
            ("client", client_key, client_cert),
        ):
            k8s.core.v1.Secret(
                f"{name}-tls-{role}",
                metadata=meta(f"{TLS_SECRET}-{role}", args.namespace, labels),
                type="kubernetes.io/tls",
                string_data={
                    "ca.crt": ca.cert_pem,
                    "tls.crt": cert.cert_pem,
                    "tls.key": key.private_key_pem,
                },
                opts=child,
            )

    def _bucket(
        self,
        resource_name: str,
        bucket_name: str,
        location: str,
        storage_class: str,
        keep_days: int,
        args: BackupsArgs,
    ) -> storage.Bucket:
        return storage.Bucket(
            resource_name,
            name=bucket_name,
            location=location.upper(),
            storage_class=storage_class,
            uniform_bucket_level_access=True,  # IAM only, no per-object ACLs
            public_access_prevention="enforced",
            versioning=storage.BucketVersioningArgs(enabled=True),
            # Deleting backups must be deliberate: a deleted object stays recoverable as long
            # as the repository keeps what it held.
            soft_delete_policy=storage.BucketSoftDeletePolicyArgs(
                retention_duration_seconds=min(keep_days, 90) * 24 * 3600
            ),
            lifecycle_rules=[
                # pgBackRest rewrites its info files on every backup and expires old backups
                # itself; versioning keeps what it replaced, which only the retention needs.
                storage.BucketLifecycleRuleArgs(
                    action=storage.BucketLifecycleRuleActionArgs(type="Delete"),
                    condition=storage.BucketLifecycleRuleConditionArgs(
                        days_since_noncurrent_time=keep_days, with_state="ARCHIVED"
                    ),
                ),
            ],
            labels=args.gcp_labels,
            force_destroy=False,
            opts=pulumi.ResourceOptions(parent=self, protect=args.deletion_protection),
        )

    def _job_pod(self, command: list[str], restart_policy: str) -> k8s.core.v1.PodSpecArgs:
        """A pod running one pgBackRest command with the job's configuration and identity."""
        backup = container(
            "backup",
            self._image,
            command,
            ("500m", "512Mi", "2", "1Gi"),
            [
                mount("config", CONFIG_DIR, read_only=True),
                mount("tls", TLS_DIR, read_only=True),
                mount("tmp", "/tmp"),
            ],
        )
        return pod(
            [backup],
            [
                config_map_volume("config", self._job_config.metadata.name),
                secret_volume("tls", f"{TLS_SECRET}-client"),
                empty_dir("tmp", "1Gi"),
            ],
            "databases",
            # The GKE metadata server hands out the Workload Identity token without the
            # Kubernetes API token being mounted.
            service_account_name=self._job_account.metadata.name,
            restart_policy=restart_policy,
        )

    def stanza_job(self, name: str, members: Sequence[pulumi.Resource]) -> k8s.batch.v1.Job:
        """Create the stanza once the members run (idempotent): until it exists every
        archive-push fails, and WAL would pile up on the primary until the first backup."""
        conf = f"{CONFIG_DIR}/pgbackrest.conf"
        steps = " && ".join(
            " ".join(pgbackrest.command(conf, step)) for step in ("stanza-create", "check")
        )
        labels = {**self._labels, "backup": "stanza"}
        return k8s.batch.v1.Job(
            f"{name}-stanza",
            metadata=meta("pg-backup-stanza", self._namespace, labels),
            spec=k8s.batch.v1.JobSpecArgs(
                backoff_limit=10,
                active_deadline_seconds=1800,
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
                    spec=self._job_pod(["sh", "-c", steps], "OnFailure"),
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(members)),
        )

    def _cron_job(
        self,
        name: str,
        job: str,
        kind: Literal["full", "incr"],
        repo_number: int,
        schedule: str,
        args: BackupsArgs,
        labels: dict[str, str],
        child: pulumi.ResourceOptions,
    ) -> None:
        job_labels = {**labels, "backup": job}
        command = pgbackrest.backup_command(f"{CONFIG_DIR}/pgbackrest.conf", kind, repo_number)
        cron_job(
            f"{name}-{job}",
            meta(f"pg-backup-{job}", args.namespace, job_labels),
            schedule,
            job_labels,
            self._job_pod(command, "Never"),
            deadline_seconds=6 * 3600,  # pgBackRest holds a lock: backups never stack up
            opts=child,
        )
