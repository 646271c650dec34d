"""PostgreSQL topology and the files every member reads: postgresql.conf, pg_hba.conf, .pgpass.

The same rendering serves the GKE stack (hosts are per-member DNS names, one port) and the
local platform (127.0.0.1, one port per member). Nothing here knows which one it renders for.

Layout contract with ``scripts.postgres_start_sh``: the rendered postgresql.conf and pg_hba.conf
live in ``conf_dir`` *outside* the data directory and the server is started with
``-c config_file=<conf_dir>/postgresql.conf -p <member port>``. So a replica cloned with
pg_basebackup never inherits the primary's port, and a ConfigMap change reaches the server on
reload. Per-member state (primary_conninfo, fencing) lives in the data directory's
postgresql.auto.conf, where ALTER SYSTEM puts it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_network

from components.conf import zone_of

# Role and database names are interpolated into SQL and shell by the scripts: keep them boring.
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Member names become application_name, synchronous_standby_names entries and pod names.
_MEMBER_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# Hosts and paths end up unquoted in pgpool command lines and conninfo strings.
_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_./@:-]+")

Setting = str | int | float | bool


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise ValueError(f"{what} {value!r} does not match {pattern.pattern}")
    return value


def check_token(value: str, what: str) -> str:
    """Reject values that would need quoting in a shell word, a conninfo or a config string."""
    return _check(_SAFE_TOKEN, value, what)


def quote(value: str) -> str:
    """A single-quoted string as postgresql.conf and pgpool.conf read it."""
    if "\n" in value:
        raise ValueError(f"newline in configuration value {value!r}")
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def render_setting(name: str, value: Setting) -> str:
    if isinstance(value, bool):  # before int: bool is an int
        text = "on" if value else "off"
    elif isinstance(value, int | float):
        text = str(value)
    else:
        text = quote(value)
    return f"{name} = {text}"


def render_settings(sections: Sequence[tuple[str, Mapping[str, Setting]]]) -> str:
    """Settings grouped under comment headings; a name may appear only once in the file."""
    seen: set[str] = set()
    lines: list[str] = []
    for title, settings in sections:
        if not settings:
            continue
        lines += ["", f"# --- {title}"]
        for name, value in settings.items():
            if name in seen:
                raise ValueError(f"setting {name} rendered twice")
            seen.add(name)
            lines.append(render_setting(name, value))
    return "\n".join(lines).lstrip("\n") + "\n"


def quorum_of(zones: Sequence[str | None], index: int) -> list[int]:
    """Which members (by index) acknowledge the commits of member ``index`` as primary, the
    members being in ``zones``: those in other zones (a member without a zone is a zone of
    its own). A standby in the primary's zone would acknowledge a commit that the loss of the
    zone then takes with it. In a single-zone stack (dev) a zone loss takes everything
    anyway: there every other member counts, against the loss of a node."""
    own, single_zone = zones[index], len(set(zones)) <= 1
    return [
        j
        for j, zone in enumerate(zones)
        if j != index and (single_zone or own is None or zone != own)
    ]


def smallest_quorum(members: int, zones: Sequence[str]) -> int:
    """The smallest quorum of any of ``members`` placed by ``zone_of``: the most
    ``synchronous_standbys`` can be."""
    placed = [zone_of(i, zones) for i in range(members)]
    return min(len(quorum_of(placed, i)) for i in range(members))


@dataclass(frozen=True)
class PgMember:
    """One PostgreSQL server. ``data_dir`` overrides the topology's (local: one per member)."""

    name: str
    host: str
    port: int = 5432
    zone: str | None = None
    data_dir: str | None = None

    def __post_init__(self) -> None:
        _check(_MEMBER_NAME, self.name, "member name")
        check_token(self.host, "member host")
        if not 0 < self.port < 65536:
            raise ValueError(f"member {self.name}: port {self.port} out of range")
        if self.data_dir is not None:
            check_token(self.data_dir, "member data_dir")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class PgUsers:
    """Role names only. Passwords never appear here: they come from Secrets (see ``pgpass``)."""

    superuser: str = "postgres"
    replication: str = "replicator"
    app: str = "shop"
    healthcheck: str = "pgpool_check"
    app_database: str = "shop"  # owned by ``app``, created at bootstrap

    def __post_init__(self) -> None:
        for what in ("superuser", "replication", "app", "healthcheck", "app_database"):
            _check(_IDENT, getattr(self, what), what)
        roles = self.roles()
        if len(set(roles)) != len(roles):
            raise ValueError(f"roles must be distinct: {roles}")

    def roles(self) -> tuple[str, ...]:
        return (self.superuser, self.replication, self.app, self.healthcheck)


@dataclass(frozen=True)
class PgTuning:
    """Resource settings. Defaults size a c2-standard-8 (8 vCPU, 32 GB) database node."""

    # 3 pgpool pods x 50 children x 4 cached backends = 600, plus checks, walsenders, admin.
    max_connections: int = 700
    superuser_reserved_connections: int = 5
    shared_buffers: str = "8GB"  # 25% of RAM; the rest is page cache
    effective_cache_size: str = "22GB"
    work_mem: str = "8MB"  # per sort/hash node; 700 connections must not exhaust RAM
    maintenance_work_mem: str = "1GB"
    huge_pages: str = "try"
    max_wal_size: str = "8GB"
    min_wal_size: str = "2GB"
    # Lets a rewound old primary or a briefly disconnected standby catch up without slots.
    wal_keep_size: str = "4GB"
    checkpoint_timeout: str = "15min"
    random_page_cost: float = 1.1  # pd-ssd
    effective_io_concurrency: int = 200
    max_worker_processes: int = 8
    max_parallel_workers: int = 8
    max_parallel_workers_per_gather: int = 2
    max_wal_senders: int = 10
    max_replication_slots: int = 10
    log_min_duration_statement: str = "500ms"

    @classmethod
    def tiny(cls) -> PgTuning:
        """Several members, pgpool and the services share one small machine (local, tests)."""
        return cls(
            max_connections=60,
            superuser_reserved_connections=3,
            shared_buffers="32MB",
            effective_cache_size="256MB",
            work_mem="4MB",
            maintenance_work_mem="32MB",
            huge_pages="off",
            max_wal_size="256MB",
            min_wal_size="80MB",
            wal_keep_size="256MB",
            checkpoint_timeout="5min",
            max_worker_processes=4,
            max_parallel_workers=2,
            max_parallel_workers_per_gather=0,
            max_wal_senders=10,
            max_replication_slots=4,
            log_min_duration_statement="-1",
        )


@dataclass(frozen=True)
class WalArchive:
    """Continuous archiving, e.g. ``wal-g wal-push %p`` / ``wal-g wal-fetch %f %p`` to GCS."""

    archive_command: str
    restore_command: str | None = None
    archive_timeout: str = "60s"  # bounds the RPO of a quiet database


@dataclass(frozen=True)
class PgTopology:
    """The replicated cluster. ``members[0]`` is the initial primary; order = pgpool node ids."""

    members: tuple[PgMember, ...]
    data_dir: str = "/var/lib/postgresql/data/pgdata"
    bin_dir: str = "/usr/lib/postgresql/15/bin"
    conf_dir: str = "/etc/postgresql/conf"  # postgresql.conf + pg_hba.conf (a ConfigMap)
    socket_dir: str = "/var/run/postgresql"
    listen_addresses: str = "*"
    # Commits wait for this many standbys (ANY n) of the primary's quorum (`quorum`): the
    # standbys in other zones, so an acknowledged write survives the loss of its zone.
    synchronous_standbys: int = 1
    extra: Mapping[str, Setting] = field(default_factory=dict)  # escape hatch, never overrides

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("a topology needs at least one member")
        for what in ("data_dir", "bin_dir", "conf_dir", "socket_dir"):
            check_token(getattr(self, what), what)
        names = [m.name for m in self.members]
        addresses = [m.address for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate member names: {names}")
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"duplicate member addresses: {addresses}")
        if self.synchronous_standbys < 0:
            raise ValueError(f"synchronous_standbys={self.synchronous_standbys} is negative")
        for member in self.members if self.synchronous_standbys else ():
            others = len(self.quorum(member))
            if others < self.synchronous_standbys:
                raise ValueError(
                    f"synchronous_standbys={self.synchronous_standbys} but {member.name} has "
                    f"only {others} standbys outside its zone ({member.zone}) to wait for"
                )

    @property
    def primary(self) -> PgMember:
        return self.members[0]

    @property
    def standbys(self) -> tuple[PgMember, ...]:
        return self.members[1:]

    def member(self, name: str) -> PgMember:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    def data_dir_of(self, member: PgMember) -> str:
        return member.data_dir or self.data_dir

    def quorum(self, member: PgMember) -> tuple[PgMember, ...]:
        """The standbys a commit on ``member``, as primary, waits for (``quorum_of``)."""
        zones = [m.zone for m in self.members]
        return tuple(self.members[j] for j in quorum_of(zones, self.members.index(member)))


def synchronous_standby_names(topology: PgTopology, member: PgMember) -> str:
    """``ANY n (...)`` over ``member``'s quorum, for when it is the primary.

    Each member carries its own (postgres-start.sh passes it with ``-c``): the setting is
    inert on a standby, so a member's value is right whatever role a failover gives it.
    Standbys announce themselves by application_name (their member name).
    """
    if topology.synchronous_standbys == 0:
        return ""
    names = ", ".join(f'"{m.name}"' for m in topology.quorum(member))
    return f"ANY {topology.synchronous_standbys} ({names})"


def postgresql_conf(
    topology: PgTopology,
    tuning: PgTuning | None = None,
    archive: WalArchive | None = None,
) -> str:
    """postgresql.conf shared by every member (the port comes from ``-p``, see module doc)."""
    t = tuning or PgTuning()
    archiving: dict[str, Setting] = {"archive_mode": archive is not None}
    if archive is not None:
        archiving |= {
            "archive_command": archive.archive_command,
            "archive_timeout": archive.archive_timeout,
        }
        if archive.restore_command:
            archiving["restore_command"] = archive.restore_command
    header = (
        "# Rendered by components/conf/postgres.py; do not edit by hand.\n"
        "# port: set per member on the command line (postgres -p), see postgres-start.sh.\n"
    )
    return header + render_settings(
        [
            (
                "connections",
                {
                    "listen_addresses": topology.listen_addresses,
                    "unix_socket_directories": topology.socket_dir,
                    "hba_file": f"{topology.conf_dir}/pg_hba.conf",
                    "max_connections": t.max_connections,
                    "superuser_reserved_connections": t.superuser_reserved_connections,
                    "password_encryption": "scram-sha-256",
                    "tcp_keepalives_idle": 60,
                    "tcp_keepalives_interval": 10,
                    "tcp_keepalives_count": 6,
                },
            ),
            (
                "resources",
                {
                    "shared_buffers": t.shared_buffers,
                    "huge_pages": t.huge_pages,
                    "work_mem": t.work_mem,
                    "maintenance_work_mem": t.maintenance_work_mem,
                    "effective_cache_size": t.effective_cache_size,
                    "random_page_cost": t.random_page_cost,
                    "effective_io_concurrency": t.effective_io_concurrency,
                    "max_worker_processes": t.max_worker_processes,
                    "max_parallel_workers": t.max_parallel_workers,
                    "max_parallel_workers_per_gather": t.max_parallel_workers_per_gather,
                },
            ),
            (
                "WAL and checkpoints",
                {
                    "wal_level": "replica",
                    "wal_log_hints": True,  # pg_rewind needs it to rejoin an old primary
                    "wal_compression": True,
                    "max_wal_size": t.max_wal_size,
                    "min_wal_size": t.min_wal_size,
                    "wal_keep_size": t.wal_keep_size,
                    "checkpoint_timeout": t.checkpoint_timeout,
                    "checkpoint_completion_target": 0.9,
                },
            ),
            (
                "replication",
                {
                    "max_wal_senders": t.max_wal_senders,
                    "max_replication_slots": t.max_replication_slots,
                    # synchronous_standby_names: per member, from postgres-start.sh
                    # (synchronous_standby_names() above).
                    "synchronous_commit": "on",
                    "hot_standby": True,
                    "hot_standby_feedback": True,
                    # A promote request waits out this retry sleep of a standby whose
                    # primary died (5 s by default): it is most of the failover time.
                    "wal_retrieve_retry_interval": "1s",
                    "wal_receiver_status_interval": "1s",
                    "wal_receiver_timeout": "30s",
                    "wal_sender_timeout": "30s",
                    "recovery_target_timeline": "latest",  # follow a promoted peer's timeline
                },
            ),
            ("archiving", archiving),
            (
                "logging (stderr: the container runtime or the local runner collects it)",
                {
                    "log_destination": "stderr",
                    "logging_collector": False,
                    "log_line_prefix": "%m [%p] %q%u@%d ",
                    "log_min_duration_statement": t.log_min_duration_statement,
                    "log_checkpoints": True,
                    "log_lock_waits": True,
                    "log_temp_files": "10MB",
                    "log_autovacuum_min_duration": "10s",
                    # DDL logging would print CREATE ROLE ... PASSWORD in clear text.
                    "log_statement": "none",
                },
            ),
            ("extra", dict(topology.extra)),
        ]
    )


def pg_hba_conf(
    users: PgUsers,
    client_cidrs: Sequence[str],
    replication_cidrs: Sequence[str] | None = None,
) -> str:
    """scram-sha-256 for every connection; only the replication role may replicate.

    ``replication_cidrs`` defaults to ``client_cidrs``; on GKE narrow it to the database pods.
    """
    repl = client_cidrs if replication_cidrs is None else replication_cidrs
    for cidr in (*client_cidrs, *repl):
        ip_network(cidr)  # raises ValueError on a typo instead of a silent lock-out
    rows = [("local", "all", "all", "", "scram-sha-256")]
    rows += [("host", "replication", users.replication, c, "scram-sha-256") for c in repl]
    rows += [("host", "all", "all", c, "scram-sha-256") for c in client_cidrs]
    # "all" in the database column never matches replication connections, so no one else
    # can stream WAL or take a base backup.
    lines = ["# Rendered by components/conf/postgres.py; first match wins."]
    lines += ["{:<7} {:<12} {:<14} {:<18} {}".format(*r).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


def escape_colon_field(value: str, what: str) -> str:
    """A field of a colon-separated secret file (pgpass, pool_passwd, pcppass)."""
    if "\n" in value or "\r" in value or not value:
        raise ValueError(f"{what} must be a non-empty single line")
    return value.replace("\\", "\\\\").replace(":", "\\:")


def pgpass(passwords: Mapping[str, str]) -> str:
    """A libpq password file (SECRET): ``*:*:*:role:password`` per role, ``\\`` and ``:`` escaped.

    postgres-start.sh also reads bootstrap passwords from this exact form, so it is the only
    password file the PostgreSQL members need.
    """
    lines = []
    for role, password in passwords.items():
        _check(_IDENT, role, "role")
        lines.append(f"*:*:*:{role}:{escape_colon_field(password, f'password of {role}')}")
    return "\n".join(lines) + "\n"
