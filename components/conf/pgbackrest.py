"""pgBackRest configuration: WAL archiving, full and incremental backups, point-in-time recovery.

Two roles read it. Each PostgreSQL server pushes its WAL (`archive_command`) and runs
`pgbackrest server` so a backup job can reach its data directory over TLS. The backup job (a
CronJob on Kubernetes, the local runner's scheduler locally) lists every member, and backs up
from a standby so the primary only streams WAL. The repository is object storage: GCS in the
cloud (credentials from Workload Identity), the S3 API locally (moto), or a directory.

The commands an operator runs (backup, info, restore to a point in time) are built here too,
so the local drills and the GKE runbook run the same ones (`command`, `restore_options`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from components.conf.postgres import PgMember

STANZA = "shop"
TLS_PORT = 8432


@dataclass(frozen=True)
class Repository:
    kind: Literal["gcs", "s3", "posix"]
    path: str = "/pgbackrest"
    bucket: str | None = None
    # S3 only (the local platform's moto server): endpoint host, port and region.
    endpoint: str | None = None
    port: int | None = None
    region: str = "us-east-1"
    verify_tls: bool = True
    ca_file: str | None = None  # S3 only: the CA of a store with its own certificate

    def __post_init__(self) -> None:
        if self.kind != "posix" and not self.bucket:
            raise ValueError(f"a {self.kind} repository needs a bucket")
        if self.kind == "s3" and not self.endpoint:
            raise ValueError("an s3 repository needs an endpoint")


@dataclass(frozen=True)
class Tls:
    """Paths of the certificates that authenticate backup jobs and servers to each other."""

    ca_file: str
    cert_file: str
    key_file: str
    client_name: str = "pgbackrest-client"  # the CN the servers accept


@dataclass(frozen=True)
class Retention:
    # Full backups are kept for this many days, and with them every WAL segment needed to
    # recover to any moment inside the window (the seed's 7-day point-in-time recovery).
    full_days: int = 7
    # WAL kept only for the newest N full backups (None: for all of them). The older ones
    # then restore to the moment they finished, not to any moment: a long-kept copy's WAL
    # would otherwise cost far more than its backups.
    wal_for_newest_fulls: int | None = None

    def __post_init__(self) -> None:
        if self.full_days < 1:
            raise ValueError("full_days must be >= 1")
        if self.wal_for_newest_fulls is not None and self.wal_for_newest_fulls < 1:
            raise ValueError("wal_for_newest_fulls must be >= 1")


def _config(config_path: str | None) -> str:
    # None: each server's own file, from PGBACKREST_CONFIG (members sharing one postgresql.conf
    # on one machine, each with its data directory and port).
    return f"--config={config_path} " if config_path else ""


def archive_command(config_path: str | None) -> str:
    """The `archive_command` PostgreSQL runs for each finished WAL segment."""
    return f"pgbackrest {_config(config_path)}--stanza={STANZA} archive-push %p"


def restore_command(config_path: str | None) -> str:
    return f'pgbackrest {_config(config_path)}--stanza={STANZA} archive-get %f "%p"'


def command(config_path: str, name: str, *options: str) -> list[str]:
    """One pgBackRest command on the stanza: `command(conf, "backup", "--type=full")`."""
    return ["pgbackrest", f"--config={config_path}", f"--stanza={STANZA}", *options, name]


def restore_options(pg_path: str, target_time: str) -> list[str]:
    """Restore into `pg_path` (an empty directory next to the live one) from the newest backup
    before `target_time` (`YYYY-MM-DD HH:MM:SS.ffffff+00`), recovering up to it. Recovery then
    pauses at the target, still read-only, so the result can be checked before anything is
    promoted; `recovery_target_action = 'promote'` then makes it the new primary. (For "the
    latest", archive the current segment first and take that moment as the target.)"""
    return [
        f"--pg1-path={pg_path}",
        "--type=time",
        f"--target={target_time}",
        "--target-action=pause",
    ]


def _repository(n: int, repo: Repository, retention: Retention) -> list[str]:
    """The options of repository `n` (pgBackRest numbers them repo1, repo2, ...)."""
    key = f"repo{n}"
    lines = [
        f"{key}-type={repo.kind}",
        f"{key}-path={repo.path}",
        f"{key}-retention-full-type=time",
        f"{key}-retention-full={retention.full_days}",
    ]
    if retention.wal_for_newest_fulls is not None:
        lines += [
            f"{key}-retention-archive-type=full",
            f"{key}-retention-archive={retention.wal_for_newest_fulls}",
        ]
    if repo.kind == "gcs":
        lines += [
            f"{key}-gcs-bucket={repo.bucket}",
            f"{key}-gcs-key-type=auto",
        ]  # Workload Identity
    elif repo.kind == "s3":
        lines += [
            f"{key}-s3-bucket={repo.bucket}",
            f"{key}-s3-endpoint={repo.endpoint}",
            f"{key}-s3-region={repo.region}",
            f"{key}-s3-uri-style=path",
            f"{key}-s3-key-type=shared",  # keys from PGBACKREST_REPO<n>_S3_KEY{,_SECRET}
        ]
        if repo.port:
            lines.append(f"{key}-storage-port={repo.port}")
        if not repo.verify_tls:
            lines.append(f"{key}-storage-verify-tls=n")
        if repo.ca_file:
            lines.append(f"{key}-storage-ca-file={repo.ca_file}")
    return lines


def _global(
    repos: Sequence[tuple[Repository, Retention]],
    spool_dir: str,
    log_dir: str | None,
    lock_dir: str | None = None,
) -> list[str]:
    """Every repository (WAL goes to each; a backup to the one its command names), then the
    options common to all."""
    lines = ["[global]"]
    for n, (repo, retention) in enumerate(repos, start=1):
        lines += _repository(n, repo, retention)
    lines += [
        # Backups are compressed as they are written (the seed's "compress backups").
        "compress-type=zst",
        "compress-level=3",
        "process-max=2",
        "start-fast=y",
        # Asynchronous archiving: a slow bucket never stalls commits on the primary.
        "archive-async=y",
        f"spool-path={spool_dir}",
        "log-level-console=info",
        f"log-level-file={'detail' if log_dir else 'off'}",
    ]
    if log_dir:
        lines.append(f"log-path={log_dir}")
    if lock_dir:  # two local platforms on one machine must not share the default /tmp lock
        lines.append(f"lock-path={lock_dir}")
    return lines


def server_conf(
    member: PgMember,
    data_dir: str,
    socket_dir: str,
    repo: Repository,
    tls: Tls | None,
    retention: Retention = Retention(),
    spool_dir: str = "/var/spool/pgbackrest",
    log_dir: str | None = None,
    lock_dir: str | None = None,
    secondary: tuple[Repository, Retention] | None = None,
) -> str:
    """pgbackrest.conf on a PostgreSQL server: archive-push (to every repository), and the
    TLS server for backups."""
    repos = [(repo, retention), *([secondary] if secondary else [])]
    lines = _global(repos, spool_dir, log_dir, lock_dir)
    if tls:
        lines += [
            "tls-server-address=*",
            f"tls-server-ca-file={tls.ca_file}",
            f"tls-server-cert-file={tls.cert_file}",
            f"tls-server-key-file={tls.key_file}",
            f"tls-server-auth={tls.client_name}={STANZA}",
            f"tls-server-port={TLS_PORT}",
        ]
    lines += [
        "",
        f"[{STANZA}]",
        f"pg1-path={data_dir}",
        f"pg1-port={member.port}",
        f"pg1-socket-path={socket_dir}",
    ]
    return "\n".join(lines) + "\n"


def backup_job_conf(
    members: Sequence[PgMember],
    data_dir: str,
    repo: Repository,
    tls: Tls | None,
    retention: Retention = Retention(),
    spool_dir: str = "/tmp/pgbackrest",
    log_dir: str | None = None,
    socket_dir: str | None = None,
    lock_dir: str | None = None,
    secondary: tuple[Repository, Retention] | None = None,
) -> str:
    """pgbackrest.conf for the backup job: every member, so it finds the primary wherever it
    is after a failover, and copies files from a standby (`backup-standby`)."""
    repos = [(repo, retention), *([secondary] if secondary else [])]
    lines = _global(repos, spool_dir, log_dir, lock_dir)
    lines += ["", f"[{STANZA}]", f"backup-standby={'y' if len(members) > 1 else 'n'}"]
    for i, member in enumerate(members, start=1):
        path = member.data_dir or data_dir
        lines.append(f"pg{i}-path={path}")
        lines.append(f"pg{i}-port={member.port}")
        if tls:
            lines += [
                f"pg{i}-host={member.host}",
                f"pg{i}-host-type=tls",
                f"pg{i}-host-port={TLS_PORT}",
                f"pg{i}-host-ca-file={tls.ca_file}",
                f"pg{i}-host-cert-file={tls.cert_file}",
                f"pg{i}-host-key-file={tls.key_file}",
            ]
        elif socket_dir:
            # Same machine (the local platform): reach each server by its socket.
            lines.append(f"pg{i}-socket-path={socket_dir}")
    return "\n".join(lines) + "\n"


def backup_command(
    config_path: str, kind: Literal["full", "incr", "diff"], repo: int = 1
) -> list[str]:
    """Create the stanza when it is missing (idempotent), then take the backup into `repo`."""
    steps = (command(config_path, "stanza-create"), command(config_path, "check"))
    backup = command(config_path, "backup", f"--type={kind}", f"--repo={repo}")
    return ["sh", "-c", " && ".join(" ".join(step) for step in (*steps, backup))]
