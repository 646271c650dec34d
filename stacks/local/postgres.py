"""PostgreSQL primary + streaming replicas behind PgPool-II, as local processes.

Every file comes from ``components/conf`` exactly as the GKE stack renders it: the members run
the rendered ``postgres-start.sh`` (member 0 initialises the cluster, the others clone from
it), PgPool-II runs with the rendered pgpool.conf, pool_hba.conf, secrets and failover
scripts. Only the topology differs: members on 127.0.0.1, one port and data directory each.

Layout under ``root`` (owned by the ``postgres`` OS user when we are root, mode 0700)::

    conf/postgresql.conf, conf/pg_hba.conf   postgres-start.sh   secrets/pgpass
    run/ (sockets)   data/pg-N/ (PGDATA)   pgpool/{conf,secrets,scripts,run,log}/
"""

from __future__ import annotations

import csv
import io
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

from components.conf import zone_of
from components.conf.pgpool import (
    PgpoolSettings,
    check_connection_budget,
    pgpool_command,
    pgpool_files,
    pgpool_secret_files,
)
from components.conf.postgres import PgMember, PgTopology, PgTuning, WalArchive
from components.conf.scripts import (
    POSTGRES_START_SH,
    postgres_env,
    postgres_files,
    postgres_secret_files,
)
from stacks.local.ports import HOST, ZONES, PortAllocator
from stacks.local.process import (
    DEFAULT_PATH,
    LocalPlatformError,
    Process,
    Supervisor,
    make_dir,
    new_password,
    server_user,
    write_file,
)
from stacks.local.system import PG_BIN_DIR, PGPOOL, PGPOOL_BIN_DIR
from stacks.wiring import USERS

CLIENT_CIDRS = (f"{HOST}/32",)


@dataclass(frozen=True)
class PostgresOptions:
    replicas: int = 1
    # Commits wait for this many standbys (``ANY n``); at most ``replicas``.
    synchronous_standbys: int = 1
    # 24 x 2 = 48 backend connections per member, within PgTuning.tiny()'s 57 usable; 24
    # children = at most 24 client connections through pgpool at once (keep service pools small).
    pgpool_children: int = 24
    pgpool_max_pool: int = 2
    # None: PgTuning.tiny()'s 60. The whole platform raises it to fit its services' pools.
    max_connections: int | None = None


@dataclass(frozen=True)
class PoolNode:
    """One row of PgPool-II's ``SHOW pool_nodes``."""

    node_id: int
    host: str
    port: int
    status: str  # up, waiting, down, unused
    role: str  # primary or standby, as pgpool sees it
    pg_role: str  # as the server itself reports it
    select_cnt: int
    load_balance_node: bool  # the node this session's reads go to
    replication_state: str
    replication_sync_state: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def psql(
    address: str,
    sql: str,
    pgpass: Path,
    role: str = USERS.superuser,
    database: str = "postgres",
) -> list[dict[str, str]]:
    """Rows of one statement through psql (text values), as ``role`` with the passwords of
    ``pgpass``; raises LocalPlatformError on any error. Usable from another process than
    the one that started the servers (``make status``)."""
    host, port = address.rsplit(":", 1)
    result = subprocess.run(
        [
            f"{PG_BIN_DIR}/psql",
            *("-X", "-q", "--csv", "-v", "ON_ERROR_STOP=1"),
            *("-h", host, "-p", port, "-U", role, "-d", database, "-c", sql),
        ],
        env={
            "PATH": DEFAULT_PATH,
            "LANG": "C.UTF-8",
            "PGPASSFILE": str(pgpass),
            "PGCONNECT_TIMEOUT": "3",
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise LocalPlatformError(f"psql {address} as {role}: {result.stderr.strip()}")
    return list(csv.DictReader(io.StringIO(result.stdout)))


def pool_nodes(pgpool: str, pgpass: Path) -> list[PoolNode]:
    """``SHOW pool_nodes`` through the pgpool at ``pgpool``, as the app role."""
    rows = psql(pgpool, "SHOW pool_nodes", pgpass, USERS.app, USERS.app_database)
    return [
        PoolNode(
            node_id=int(r["node_id"]),
            host=r["hostname"],
            port=int(r["port"]),
            status=r["status"],
            role=r["role"],
            pg_role=r.get("pg_role", ""),
            select_cnt=int(r["select_cnt"]),
            load_balance_node=r["load_balance_node"] == "true",
            replication_state=r.get("replication_state", ""),
            replication_sync_state=r.get("replication_sync_state", ""),
        )
        for r in rows
    ]


class LocalPostgres:
    """The members and pgpool of one local platform; ``start`` brings them up in order."""

    def __init__(
        self,
        root: Path,
        secrets_dir: Path,
        supervisor: Supervisor,
        ports: PortAllocator,
        options: PostgresOptions | None = None,
    ) -> None:
        self.options = options or PostgresOptions()
        self.root = root
        self.supervisor = supervisor
        self.user = server_user("postgres")  # initdb and postgres refuse to run as root
        self.tuning = PgTuning.tiny()
        if self.options.max_connections is not None:
            self.tuning = replace(self.tuning, max_connections=self.options.max_connections)
        replicas = self.options.replicas
        self.topology = PgTopology(
            members=tuple(
                PgMember(
                    f"pg-{i}",
                    HOST,
                    ports.take(f"postgres pg-{i}"),
                    # Zones as on GKE, so commits wait for a standby in "another zone" here too.
                    zone=zone_of(i, ZONES),
                    data_dir=str(root / "data" / f"pg-{i}"),
                )
                for i in range(replicas + 1)
            ),
            data_dir=str(root / "data" / "pg-0"),
            bin_dir=PG_BIN_DIR,
            conf_dir=str(root / "conf"),
            socket_dir=str(root / "run"),
            listen_addresses=HOST,
            synchronous_standbys=min(self.options.synchronous_standbys, replicas),
        )
        pgpool_dir = root / "pgpool"
        self.pgpool_settings = PgpoolSettings(
            port=ports.take("pgpool"),
            pcp_port=ports.take("pgpool pcp (unix socket name only)"),
            listen_addresses=HOST,
            conf_dir=str(pgpool_dir / "conf"),
            secrets_dir=str(pgpool_dir / "secrets"),
            scripts_dir=str(pgpool_dir / "scripts"),
            run_dir=str(pgpool_dir / "run"),
            log_dir=str(pgpool_dir / "log"),
            bin_dir=PGPOOL_BIN_DIR,
            num_init_children=self.options.pgpool_children,
            max_pool=self.options.pgpool_max_pool,
        )
        check_connection_budget(self.pgpool_settings, self.tuning)  # before anything starts
        self.pgpass = root / "secrets" / "pgpass"  # every role: members, the runner's checks
        self.app_password_file = secrets_dir / "database-password"
        self._passwords: dict[str, str] = {}
        self._members: dict[str, Process] = {}
        self._pgpool: Process | None = None
        self._archive: WalArchive | None = None
        self._archive_env: Callable[[PgMember], dict[str, str]] = lambda member: {}

    def archive_to(
        self, archive: WalArchive, member_env: Callable[[PgMember], dict[str, str]]
    ) -> None:
        """Archive WAL (before ``start``): each member runs with ``member_env(member)``."""
        self._archive, self._archive_env = archive, member_env

    # --- addresses and credentials ------------------------------------------------------------

    @property
    def primary(self) -> str:
        return self.topology.primary.address

    @property
    def replicas(self) -> tuple[str, ...]:
        return tuple(m.address for m in self.topology.standbys)

    @property
    def pgpool(self) -> str:
        return f"{HOST}:{self.pgpool_settings.port}"

    def dsn(self, address: str, role: str = USERS.app, database: str = USERS.app_database) -> str:
        """A libpq / asyncpg URL for ``role`` (the app role by default) at ``address``."""
        password = quote(self._passwords[role], safe="")
        return f"postgresql://{role}:{password}@{address}/{database}"

    @property
    def pgpool_dsn(self) -> str:
        return self.dsn(self.pgpool)

    @property
    def primary_dsn(self) -> str:
        return self.dsn(self.primary)

    @property
    def replica_dsns(self) -> tuple[str, ...]:
        return tuple(self.dsn(address) for address in self.replicas)

    @property
    def processes(self) -> list[Process]:
        found = list(self._members.values())
        return found + ([self._pgpool] if self._pgpool else [])

    # --- start / stop -----------------------------------------------------------------------------

    def start(
        self, timeout: float = 60.0, after_primary: Callable[[float], None] | None = None
    ) -> None:
        """Primary, then the replicas (in parallel), then pgpool; each waited for.
        ``after_primary(seconds left)`` runs once the primary accepts connections, before any
        standby starts (the backup stanza, which their restore_command reads)."""
        deadline = time.monotonic() + timeout
        self._write_files()
        self.start_member(self.topology.primary.name, timeout=timeout)
        if after_primary is not None:
            after_primary(max(1.0, deadline - time.monotonic()))
        for member in self.topology.standbys:
            self.start_member(member.name, wait=False)
        for member in self.topology.standbys:
            self._wait_accepting(member, deadline - time.monotonic())
        self._wait_replication(deadline - time.monotonic())
        self._start_pgpool(deadline - time.monotonic())

    def start_member(self, name: str, *, wait: bool = True, timeout: float = 60.0) -> Process:
        """Run the rendered entrypoint for one member: it initialises, clones or rejoins."""
        member = self.topology.member(name)
        if name in self._members and self._members[name].running():
            raise LocalPlatformError(f"PostgreSQL {name} is already running")
        env = postgres_env(self.topology, USERS, member, str(self.pgpass))
        process = self.supervisor.start(
            name,
            ["sh", str(self.root / POSTGRES_START_SH)],
            env={**env, **self._archive_env(member), "HOME": str(self.root)},
            user=self.user,
            cwd=self.root,
            stop_signal=signal.SIGINT,  # fast shutdown: roll back sessions, checkpoint, exit
        )
        self._members[name] = process
        if wait:
            self._wait_accepting(member, timeout)
        return process

    def stop_member(self, name: str, timeout: float = 20.0) -> None:
        """Stop one member (fast shutdown), as a failover drill would."""
        process = self._members.pop(name)
        self.supervisor.stop([process], timeout)

    def attach_node(self, node_id: int, timeout: float = 30.0) -> None:
        """Give a rejoined member back to pgpool (``auto_failback`` is off by design).

        pgpool restarts its children on an attach: this waits until it serves again.
        """
        s = self.pgpool_settings
        result = subprocess.run(
            [
                f"{PGPOOL_BIN_DIR}/pcp_attach_node",
                *("-w", "-h", s.run_dir, "-p", str(s.pcp_port), "-U", s.pcp_user),
                *("-n", str(node_id)),
            ],
            env={"PATH": DEFAULT_PATH, "PCPPASSFILE": s.path("pcppass")},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise LocalPlatformError(f"pcp_attach_node {node_id}: {result.stderr.strip()}")
        assert self._pgpool is not None
        self.supervisor.wait_until(
            lambda: self.pool_nodes()[node_id].status in ("up", "waiting"),
            process=self._pgpool,
            what=f"PgPool-II attaching node {node_id}",
            timeout=timeout,
        )

    def member_process(self, name: str) -> Process | None:
        return self._members.get(name)

    def rejoin_member(self, name: str, timeout: float = 120.0) -> None:
        """Bring a member that stopped back as a standby and give it back to pgpool.

        ``postgres-start.sh`` decides, exactly as in a restarted pod: an old primary is
        rewound into a standby of the current primary, a standby follows it. The node is
        attached only once it streams from the primary pgpool knows (``attach_if_following``).
        """
        deadline = time.monotonic() + timeout
        old = self._members.get(name)
        if old is not None:
            if old.running():
                raise LocalPlatformError(f"PostgreSQL {name} is still running")
            self.supervisor.forget(old)
            del self._members[name]
        self.start_member(name, timeout=deadline - time.monotonic())
        self.supervisor.wait_until(
            lambda: self.attach_if_following(name, timeout=max(1.0, deadline - time.monotonic())),
            process=self._members[name],
            what=f"{name} streaming from the primary and attached",
            timeout=max(1.0, deadline - time.monotonic()),
            interval=0.5,
        )

    def attach_if_following(self, name: str, timeout: float = 30.0) -> bool:
        """Attach a detached member if it streams from the primary pgpool knows (the
        condition ``follow_primary.sh`` applies to the standbys it re-points), so a diverged
        old primary never takes reads or writes again (``auto_failback`` stays off). True
        when the member is attached (by this call or already)."""
        member = self.topology.member(name)
        node_id = self.topology.members.index(member)
        nodes = self.pool_nodes()
        if nodes[node_id].status != "down":
            return True  # follow_primary.sh may have been first
        primary = next((n for n in nodes if n.role == "primary" and n.status != "down"), None)
        if primary is None:
            return False
        streaming = self.query(
            member.address,
            "SELECT status FROM pg_stat_wal_receiver "
            f"WHERE sender_host = '{primary.host}' AND sender_port = {primary.port}",
        )
        if streaming != [{"status": "streaming"}]:
            return False
        self.attach_node(node_id, timeout=timeout)
        return True

    # --- restore from a backup (stacks.local.backups) ------------------------------------------

    def check_restored(
        self, data_dir: Path, port: int, env: dict[str, str], timeout: float = 300.0
    ) -> dict[str, str]:
        """Run a private server on a restored data directory until its recovery pauses at the
        target (read-only, nothing promoted), answer a few facts of it, and stop it.

        A recovery that cannot reach its target (a gap in the archive, a target past the
        last archived segment) ends the server: that is the failure, named with its log."""
        process = self.supervisor.start(
            "restore-check",
            [
                f"{PG_BIN_DIR}/postgres",
                *("-D", str(data_dir), "-p", str(port)),
                *("-c", f"config_file={self.topology.conf_dir}/postgresql.conf"),
                *("-c", "listen_addresses=", "-c", "archive_mode=off"),
                *("-c", "synchronous_standby_names=", "-c", "cluster_name=restore-check"),
            ],
            env={**env, "HOME": str(self.root)},
            user=self.user,
            cwd=self.root,
            stop_signal=signal.SIGINT,
        )
        socket = f"{self.topology.socket_dir}:{port}"
        try:
            self.supervisor.wait_until(
                lambda: (
                    self.query(socket, "SELECT pg_get_wal_replay_pause_state()")
                    == [{"pg_get_wal_replay_pause_state": "paused"}]
                ),
                process=process,
                what="the restored copy recovering to its target",
                timeout=timeout,
                interval=0.5,
            )
            [facts] = self.query(
                socket,
                "SELECT pg_last_xact_replay_timestamp() AS last_transaction, "
                "(SELECT count(*) FROM orders) AS orders",
                database=USERS.app_database,
            )
            return facts
        finally:
            self.supervisor.stop([process], timeout=30)

    def replace_data(self, restored: Path, keep_dir: Path, timeout: float = 120.0) -> None:
        """Stop pgpool and every member, move their data directories into ``keep_dir``, make
        ``restored`` the first member's and promote it at its target; then the others clone
        from it as they would on a fresh start, and pgpool comes back."""
        deadline = time.monotonic() + timeout
        self.stop_pgpool()
        self.supervisor.stop(list(self._members.values()), timeout=30)
        self._members.clear()
        make_dir(keep_dir, mode=0o700)
        for member in self.topology.members:
            current = Path(self.topology.data_dir_of(member))
            if current.exists():
                current.rename(keep_dir / member.name)
        auto_conf = restored / "postgresql.auto.conf"
        # pgBackRest wrote a restore_command for the directory it restored into; the member's
        # own (postgresql.conf, its PGBACKREST_CONFIG) applies once it sits in its place.
        kept = [
            line
            for line in auto_conf.read_text().splitlines()
            if not line.startswith(("restore_command", "recovery_target_action"))
        ]
        write_file(
            auto_conf,
            "\n".join([*kept, "recovery_target_action = 'promote'", ""]),
            mode=0o600,
            owner=self.user,
        )
        first = self.topology.members[0]
        restored.rename(self.topology.data_dir_of(first))
        self.start_member(first.name, timeout=deadline - time.monotonic())
        self.supervisor.wait_until(
            lambda: (
                self.query(first.address, "SELECT pg_is_in_recovery()")
                == [{"pg_is_in_recovery": "f"}]
            ),
            process=self._members[first.name],
            what=f"{first.name} promoted at the restore target",
            timeout=max(1.0, deadline - time.monotonic()),
            interval=0.5,
        )
        # The standbys clone postgresql.auto.conf too: with the target left in it, each would
        # stop replaying at that moment and promote itself.
        for setting in ("recovery_target_time", "recovery_target_action"):
            self.query(first.address, f"ALTER SYSTEM RESET {setting}")
        for member in self.topology.standbys:
            self.start_member(member.name, wait=False)
        for member in self.topology.standbys:
            self._wait_accepting(member, max(1.0, deadline - time.monotonic()))
        self._wait_replication(max(1.0, deadline - time.monotonic()))
        # pgpool remembers which nodes it had detached: the restored cluster starts afresh.
        Path(self.pgpool_settings.log_dir, "pgpool_status").unlink(missing_ok=True)
        self._start_pgpool(max(1.0, deadline - time.monotonic()))

    def stop_pgpool(self, timeout: float = 20.0) -> None:
        if self._pgpool is not None:
            self.supervisor.stop([self._pgpool], timeout)
            self._pgpool = None

    # --- queries ----------------------------------------------------------------------------------

    def query(
        self,
        address: str,
        sql: str,
        role: str = USERS.superuser,
        database: str = "postgres",
    ) -> list[dict[str, str]]:
        """Rows of one statement through psql (text values), as ``role``; raises on error."""
        return psql(address, sql, self.pgpass, role, database)

    def pool_nodes(self) -> list[PoolNode]:
        """``SHOW pool_nodes`` through pgpool, as the app role."""
        return pool_nodes(self.pgpool, self.pgpass)

    # --- internals ----------------------------------------------------------------------------

    def _write_files(self) -> None:
        user, s = self.user, self.pgpool_settings
        self._passwords = {role: new_password() for role in USERS.roles()}
        write_file(self.app_password_file, self._passwords[USERS.app], mode=0o600)
        make_dir(self.root, owner=user)
        for sub in ("conf", "run", "data", "secrets", "pgpool"):
            make_dir(self.root / sub, owner=user)
        for directory in (s.conf_dir, s.secrets_dir, s.scripts_dir, s.run_dir, s.log_dir):
            make_dir(Path(directory), owner=user)
        files = postgres_files(self.topology, USERS, CLIENT_CIDRS, self.tuning, self._archive)
        for name, text in files.items():
            where = self.root if name == POSTGRES_START_SH else Path(self.topology.conf_dir)
            write_file(where / name, text, mode=0o600, owner=user)
        secret = postgres_secret_files(USERS, self._passwords)["pgpass"]
        write_file(self.pgpass, secret, mode=0o600, owner=user)
        # pgpool_files checks the connection budget against the members' max_connections.
        pool_files = pgpool_files(self.topology, USERS, s, CLIENT_CIDRS, self.tuning)
        pool_secrets = pgpool_secret_files(USERS, s, self._passwords, new_password())
        for name, text in (pool_files | pool_secrets).items():
            write_file(Path(s.path(name)), text, mode=0o600, owner=user)

    def _wait_accepting(self, member: PgMember, timeout: float) -> None:
        self.supervisor.wait_until(
            lambda: self.query(member.address, "SELECT 1") == [{"?column?": "1"}],
            process=self._members[member.name],
            what=f"PostgreSQL {member.name} on {member.address}",
            timeout=timeout,
        )

    def _wait_replication(self, timeout: float) -> None:
        standbys = {m.name for m in self.topology.standbys}
        needed = self.topology.synchronous_standbys

        def replicating() -> bool:
            rows = self.query(
                self.primary,
                "SELECT application_name, state, sync_state FROM pg_stat_replication",
            )
            streaming = {r["application_name"] for r in rows if r["state"] == "streaming"}
            synchronous = [r for r in rows if r["sync_state"] in ("sync", "quorum")]
            return standbys <= streaming and len(synchronous) >= needed

        self.supervisor.wait_until(
            replicating,
            process=self._members[self.topology.primary.name],
            what=f"streaming replication to {', '.join(sorted(standbys))}",
            timeout=timeout,
        )

    def _start_pgpool(self, timeout: float) -> None:
        self._pgpool = self.supervisor.start(
            "pgpool",
            pgpool_command(self.pgpool_settings, PGPOOL),
            env={"HOME": str(self.root)},
            user=self.user,
            cwd=self.root,
            stop_signal=signal.SIGINT,  # fast shutdown (SIGTERM would wait for clients)
        )
        expected = ["primary"] + ["standby"] * len(self.topology.standbys)

        def ready() -> bool:
            nodes = self.pool_nodes()
            return [n.role for n in nodes] == expected and all(
                n.status in ("up", "waiting") for n in nodes
            )

        self.supervisor.wait_until(
            ready, process=self._pgpool, what=f"PgPool-II on {self.pgpool}", timeout=timeout
        )
