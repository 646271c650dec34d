"""pgBackRest on the local platform: WAL archiving and backups to an S3-compatible store.

The store is `moto` in server mode (the S3 API, in memory) behind HAProxy, which speaks the
TLS pgBackRest insists on (moto's own TLS ends connections without a TLS close, which
pgBackRest's OpenSSL reads as an error). Every file pgBackRest reads is rendered by
``components/conf/pgbackrest.py``, as for GKE: each member's server configuration (its
``archive_command`` pushes every WAL segment), and the backup job's, which lists every member
and copies from a standby. Only the repository differs: ``s3`` here, ``gcs`` there.

Layout under ``root``::

    conf/pg-N.conf  conf/job.conf   tls/ (the store's CA and certificate)   store/haproxy.cfg
    spool/pg-N/ (asynchronous archiving)   lock/   log/ (pgBackRest's own logs)
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from components.conf import pgbackrest
from components.conf.postgres import PgMember, WalArchive
from stacks.local.certs import LocalCa
from stacks.local.ports import HOST, PortAllocator
from stacks.local.process import (
    DEFAULT_PATH,
    LocalPlatformError,
    OsUser,
    Process,
    Supervisor,
    make_dir,
    new_password,
    write_file,
)
from stacks.local.system import HAPROXY

BUCKET = "pg-backups"
# pgBackRest checks the store's certificate against a host name, never an IP address.
STORE_HOST = "localhost"
BackupType = Literal["full", "incr", "diff"]


@dataclass(frozen=True)
class Backup:
    """One backup in the repository, as `pgbackrest info` reports it."""

    label: str
    type: str
    started: datetime
    finished: datetime
    size_bytes: int  # of the database it copied
    stored_bytes: int  # in the repository, compressed (an incremental: only what changed)


@dataclass(frozen=True)
class RecoveryWindow:
    """Where a point-in-time restore can go: from the end of the oldest backup to the last WAL
    segment archived (up to `archive_timeout` behind the present; `archive_now` closes it)."""

    backups: tuple[Backup, ...]
    earliest: datetime | None  # None: no backup yet


@dataclass(frozen=True)
class BackupTool:
    """pgBackRest's commands on the platform's repository, from any process: the runner, and
    `make backup` and `make status` (``from_state``)."""

    job_config: Path
    credentials: Mapping[str, str]
    pgpass: Path
    user: str  # the servers' OS user: pgBackRest reads their data directories
    cwd: Path

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> BackupTool:
        """From the state file's `backups` entry (its keys are in a 0600 file it names)."""
        entry = state.get("backups")
        if not entry:
            raise LocalPlatformError("this platform runs without backups")
        credentials = json.loads(Path(entry["credentials_file"]).read_text())
        return cls(
            Path(entry["job_config"]),
            credentials,
            Path(entry["pgpass"]),
            entry["user"],
            Path(entry["root"]),
        )

    def run(self, name: str, *options: str, timeout: float = 600.0) -> str:
        """One pgBackRest command with the job's configuration, as the servers' user; its
        output, or LocalPlatformError naming the command and what pgBackRest said."""
        argv = pgbackrest.command(str(self.job_config), name, *options)
        try:
            result = subprocess.run(
                argv,
                env={
                    "PATH": DEFAULT_PATH,
                    "LANG": "C.UTF-8",
                    "PGPASSFILE": str(self.pgpass),
                    **self.credentials,
                },
                cwd=self.cwd,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                **OsUser.named(self.user).popen_kwargs(),  # type: ignore[arg-type]
            )
        except subprocess.TimeoutExpired:
            raise LocalPlatformError(
                f"pgbackrest {name} did not finish within {timeout:.0f} s"
            ) from None
        if result.returncode != 0:
            said = [line for line in result.stdout.splitlines() if "ERROR" in line]
            detail = "; ".join(said) or result.stderr.strip() or result.stdout.strip()[-500:]
            raise LocalPlatformError(f"pgbackrest {name} failed: {detail}")
        return result.stdout

    def backup(self, kind: BackupType = "full", timeout: float = 600.0) -> Backup:
        """Take a backup (from a standby); the new backup as the repository lists it."""
        self.run("backup", f"--type={kind}", timeout=timeout)
        return self.window().backups[-1]

    def archive_now(self, timeout: float = 120.0) -> None:
        """Close the current WAL segment and wait until it is in the store (`check`): every
        transaction committed before the call can be recovered."""
        self.run("check", timeout=timeout)

    def window(self) -> RecoveryWindow:
        return recovery_window(json.loads(self.run("info", "--output=json", timeout=60)))


class LocalBackups:
    def __init__(
        self,
        root: Path,
        supervisor: Supervisor,
        ports: PortAllocator,
        user: OsUser,
        members: Sequence[PgMember],
        socket_dir: str,
        pgpass: Path,
    ) -> None:
        self.root = root
        self.pgpass = pgpass  # pgBackRest logs in to the members as the superuser
        self.supervisor = supervisor
        self.user = user  # pgBackRest runs as the servers' user: it reads their data
        self.members = tuple(members)
        self.socket_dir = socket_dir
        self.store_port = ports.take("object store (moto)")
        self.tls_port = ports.take("object store TLS")
        self.access_key = new_password(20)
        self.secret_key = new_password(40)
        self.ca_file = root / "tls" / "ca.crt"
        self.job_config = root / "conf" / "job.conf"
        self.repo = pgbackrest.Repository(
            kind="s3",
            bucket=BUCKET,
            endpoint=STORE_HOST,
            port=self.tls_port,
            ca_file=str(self.ca_file),
        )
        self._processes: list[Process] = []
        # pgBackRest's commands on this repository (BackupTool.from_state in another process).
        self.tool = BackupTool(
            self.job_config, self.credentials, self.pgpass, self.user.name, self.root
        )

    # --- what the PostgreSQL members need -------------------------------------------------------

    def member_config(self, member: PgMember) -> Path:
        return self.root / "conf" / f"{member.name}.conf"

    @property
    def archive(self) -> WalArchive:
        """Each member finds its own server configuration in PGBACKREST_CONFIG."""
        return WalArchive(
            archive_command=pgbackrest.archive_command(None),
            restore_command=pgbackrest.restore_command(None),
        )

    @property
    def credentials(self) -> dict[str, str]:
        """The store's keys, as pgBackRest reads them (never in a file it logs)."""
        return {
            "PGBACKREST_REPO1_S3_KEY": self.access_key,
            "PGBACKREST_REPO1_S3_KEY_SECRET": self.secret_key,
        }

    def member_env(self, member: PgMember) -> dict[str, str]:
        return {**self.credentials, "PGBACKREST_CONFIG": str(self.member_config(member))}

    @property
    def credentials_file(self) -> Path:
        return self.root / "conf" / "store-credentials.json"

    def state(self) -> dict[str, str]:
        """The state file's `backups` entry (paths only: the keys stay in their 0600 file)."""
        return {
            "store": self.store_url,
            "job_config": str(self.job_config),
            "credentials_file": str(self.credentials_file),
            "pgpass": str(self.pgpass),
            "user": self.user.name,
            "root": str(self.root),
        }

    @property
    def store_url(self) -> str:
        return f"https://{STORE_HOST}:{self.tls_port}"

    @property
    def processes(self) -> list[Process]:
        return list(self._processes)

    # --- start ------------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """The store (moto behind its TLS front) and the bucket; then the members may start."""
        deadline = time.monotonic() + timeout
        self._write_files()
        moto = self.supervisor.start(
            "object-store",
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.store_port)],
            env={"PYTHONUNBUFFERED": "1"},
        )
        front = self.supervisor.start(
            "object-store-tls",
            [HAPROXY, "-W", "-db", "-f", str(self.root / "store/haproxy.cfg")],
            env={},
        )
        self._processes = [moto, front]
        self.supervisor.wait_until(
            self._create_bucket,
            process=moto,
            what=f"the object store on {self.store_url}",
            timeout=max(1.0, deadline - time.monotonic()),
            interval=0.2,
        )

    def create_stanza(self, timeout: float = 120.0) -> None:
        """The stanza (idempotent), then `check`: a WAL segment reaches the store."""
        self.tool.run("stanza-create", timeout=timeout)
        self.tool.run("check", timeout=timeout)

    # --- a restore's copy ---------------------------------------------------------------------

    def restore_copy(self, into: Path, target: datetime, timeout: float = 900.0) -> None:
        """Restore the newest backup before ``target`` into the empty directory ``into``, set
        to recover up to ``target`` and pause there."""
        if into.exists():
            shutil.rmtree(into)
        make_dir(into, mode=0o700, owner=self.user)
        self.tool.run(
            "restore", *pgbackrest.restore_options(str(into), pg_time(target)), timeout=timeout
        )

    # --- internals --------------------------------------------------------------------------------

    def _write_files(self) -> None:
        user = self.user
        make_dir(self.root, mode=0o711)
        for sub in ("conf", "tls", "store", "spool", "lock", "log"):
            make_dir(self.root / sub, owner=user)
        ca = LocalCa("ecommerce-local-object-store")
        issued = ca.server(STORE_HOST, HOST)
        write_file(self.ca_file, ca.cert_pem, mode=0o644, owner=user)
        write_file(self.root / "store" / "tls.pem", issued.key_pem + issued.cert_pem, mode=0o600)
        write_file(self.root / "store" / "haproxy.cfg", self._front_config(), mode=0o600)
        for member in self.members:
            # Each its own spool and locks, as each pod has: two standbys fetching WAL at once
            # would otherwise wait on each other's archive-get lock.
            spool = make_dir(self.root / "spool" / member.name, owner=user)
            lock = make_dir(self.root / "lock" / member.name, owner=user)
            conf = pgbackrest.server_conf(
                member,
                member.data_dir or "",
                self.socket_dir,
                self.repo,
                tls=None,
                spool_dir=str(spool),
                log_dir=str(self.root / "log"),
                lock_dir=str(lock),
            )
            write_file(self.member_config(member), conf, mode=0o600, owner=user)
        job = pgbackrest.backup_job_conf(
            self.members,
            "",
            self.repo,
            tls=None,
            spool_dir=str(self.root / "spool" / "job"),
            log_dir=str(self.root / "log"),
            socket_dir=self.socket_dir,
            lock_dir=str(self.root / "lock"),
        )
        write_file(self.job_config, job, mode=0o600, owner=user)
        write_file(self.credentials_file, json.dumps(self.credentials), mode=0o600)

    def _front_config(self) -> str:
        # A stopped store answers 503 after `timeout server`: archiving fails fast, and retries.
        return "\n".join(
            [
                "global",
                "    maxconn 256",
                "defaults",
                "    mode http",
                "    timeout connect 2s",
                "    timeout client 60s",
                "    timeout server 10s",
                "frontend s3",
                f"    bind {HOST}:{self.tls_port} ssl crt {self.root / 'store' / 'tls.pem'}",
                "    default_backend moto",
                "backend moto",
                f"    server moto {HOST}:{self.store_port}",
                "",
            ]
        )

    def _create_bucket(self) -> bool:
        """PUT the bucket through the TLS front (idempotent in moto): the store is up."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        request = urllib.request.Request(f"{self.store_url}/{BUCKET}", method="PUT")
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            return bool(response.status == 200)


def pg_time(moment: datetime) -> str:
    """A moment as PostgreSQL's recovery_target_time reads it, in UTC to the microsecond."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def _at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def recovery_window(info: list[dict[str, Any]]) -> RecoveryWindow:
    """The stanza's backups and where its recovery window starts, from `pgbackrest info
    --output=json` (it names WAL segments, not times: the window ends at the last archived)."""
    stanza = info[0] if info else {}
    backups = tuple(
        Backup(
            label=b["label"],
            type=b["type"],
            started=_at(b["timestamp"]["start"]),
            finished=_at(b["timestamp"]["stop"]),
            size_bytes=b["info"]["size"],
            stored_bytes=b["info"]["repository"]["delta"],
        )
        for b in stanza.get("backup", [])
        if not b.get("error")
    )
    return RecoveryWindow(
        backups=backups,
        earliest=backups[0].finished if backups else None,
    )
