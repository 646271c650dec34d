"""Backup for GKE: scheduled backups of namespaces, their persistent volumes and Secrets.

pgBackRest already gives the databases point-in-time recovery (components/backups.py); this
covers what it does not: the volumes of the other stateful workloads (the Redis nodes), and
the Secrets and manifests of the data tier, so a namespace lost to a mistake comes back whole.
The cluster needs the Backup for GKE agent (components/cluster.py enables it).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_gcp import gkebackup
from pydantic import model_validator

from components.inputs import CronSchedule, Inputs, KeyProblem, PositiveInt


class VolumeBackupConfig(Inputs):
    schedule: CronSchedule = "0 1 * * *"  # daily at 01:00 UTC, before pgBackRest's full backup
    retain_days: PositiveInt = 14
    # Backups cannot be deleted for this long, by anyone (0: no lock).
    delete_lock_days: int = 7

    @model_validator(mode="after")
    def _lock(self) -> VolumeBackupConfig:
        if not 0 <= self.delete_lock_days <= self.retain_days:
            raise KeyProblem(
                "deleteLockDays",
                f"expected 0..retainDays ({self.retain_days}), got {self.delete_lock_days}",
            )
        return self


@dataclass
class VolumeBackupsArgs:
    cluster_id: pulumi.Input[str]
    region: str
    namespaces: tuple[str, ...]
    config: VolumeBackupConfig
    gcp_labels: dict[str, str]


class VolumeBackups(pulumi.ComponentResource):
    def __init__(
        self, name: str, args: VolumeBackupsArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("platform:data:VolumeBackups", name, None, opts)
        cfg = args.config
        self.plan = gkebackup.BackupPlan(
            f"{name}-plan",
            name=f"{name}-daily",
            cluster=args.cluster_id,
            location=args.region,
            backup_config=gkebackup.BackupPlanBackupConfigArgs(
                include_volume_data=True,
                include_secrets=True,
                selected_namespaces=gkebackup.BackupPlanBackupConfigSelectedNamespacesArgs(
                    namespaces=list(args.namespaces)
                ),
            ),
            backup_schedule=gkebackup.BackupPlanBackupScheduleArgs(cron_schedule=cfg.schedule),
            retention_policy=gkebackup.BackupPlanRetentionPolicyArgs(
                backup_retain_days=cfg.retain_days,
                backup_delete_lock_days=cfg.delete_lock_days,
            ),
            labels=args.gcp_labels,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"plan": self.plan.id})
