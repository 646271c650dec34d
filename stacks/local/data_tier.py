"""The data tier on one machine: PostgreSQL + PgPool-II, a Redis cluster and Memcached.

``DataTier(state_dir, config)`` checks everything it can before touching anything (the
programs are installed, the state directory is empty and reachable, the ports are free);
``start()`` brings the three up in parallel, ``stop()`` stops every process it started (and
only those) and frees the ports. Services get their environment from
``stacks.wiring.service_environment``, exactly as on GKE (``service_environment`` below).

Everything lives under the state directory::

    processes.json   what runs (PIDs with their start times: `down` stops them from elsewhere)
    logs/<process>.log   secrets/ (0600 password files the services read)
    postgres/   redis/   backups/ (with DataTierConfig.backups: stacks.local.backups)

    python -m stacks.local.data_tier up STATE_DIR     # start, print, run until Ctrl-C
    python -m stacks.local.data_tier down STATE_DIR   # stop what an `up` left running
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType

import redis

from stacks.config import CacheTtls
from stacks.local.backups import LocalBackups
from stacks.local.memcached import LocalMemcached
from stacks.local.ports import PortAllocator
from stacks.local.postgres import LocalPostgres, PostgresOptions
from stacks.local.process import (
    LocalPlatformError,
    Process,
    Supervisor,
    make_dir,
    new_password,
    recorded_processes,
    stop_recorded,
    write_file,
)
from stacks.local.redis import LocalRedis
from stacks.local.system import ensure_programs
from stacks.services import Service
from stacks.wiring import Addresses, SecretFiles, service_environment

MANIFEST = "processes.json"


@dataclass(frozen=True)
class PreparedRestore:
    """A restored copy, checked, waiting to be swapped in."""

    target: datetime
    data_dir: Path
    facts: dict[str, str]  # the copy's last transaction and its number of orders


# The renderers put paths unquoted into command lines and conninfo strings.
_SAFE_PATH = re.compile(r"[A-Za-z0-9_./@:-]+")
_MAX_SOCKET_PATH = 107  # sun_path, as PostgreSQL and pgpool enforce it


@dataclass(frozen=True)
class DataTierConfig:
    pg_replicas: int = 1
    pg_synchronous_standbys: int = 1  # at most pg_replicas
    pgpool_children: int = 24
    pgpool_max_pool: int = 2
    pg_max_connections: int | None = None  # per member; None: PgTuning.tiny()'s
    redis_masters: int = 3
    redis_replicas_per_master: int = 1
    redis_maxmemory_mb: int = 64
    memcached_nodes: int = 2
    memcached_memory_mb: int = 64
    # WAL archiving and backups through pgBackRest to a local S3 store (stacks.local.backups).
    backups: bool = False
    base_port: int | None = None  # None: random free ports; else base, base+1, ...
    start_timeout_s: float = 90.0


class DataTier:
    def __init__(self, state_dir: Path | str, config: DataTierConfig | None = None) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.config = c = config or DataTierConfig()
        ensure_programs(install_missing=False)
        self._check_state_dir()
        self.ports = PortAllocator(c.base_port)
        self.supervisor = Supervisor(self.state_dir / "logs", self.state_dir / MANIFEST)
        secrets = self.state_dir / "secrets"
        # The key the user service signs access tokens with and every service verifies.
        self.jwt_secret_file = secrets / "jwt-secret"
        # The key the user service makes password-reset tokens with (its own: no other reads it).
        self.reset_key_file = secrets / "reset-key"
        self.postgres = LocalPostgres(
            self.state_dir / "postgres",
            secrets,
            self.supervisor,
            self.ports,
            PostgresOptions(
                replicas=c.pg_replicas,
                synchronous_standbys=c.pg_synchronous_standbys,
                pgpool_children=c.pgpool_children,
                pgpool_max_pool=c.pgpool_max_pool,
                max_connections=c.pg_max_connections,
            ),
        )
        self._check_postgres_user()
        self.backups: LocalBackups | None = None
        if c.backups:
            self.backups = LocalBackups(
                self.state_dir / "backups",
                self.supervisor,
                self.ports,
                self.postgres.user,
                self.postgres.topology.members,
                self.postgres.topology.socket_dir,
                self.postgres.pgpass,
            )
            self.postgres.archive_to(self.backups.archive, self.backups.member_env)
            self.restore_check_port = self.ports.take("restored copy (its check)")
        self.redis = LocalRedis(
            self.state_dir / "redis",
            secrets,
            self.supervisor,
            self.ports,
            masters=c.redis_masters,
            replicas_per_master=c.redis_replicas_per_master,
            maxmemory_mb=c.redis_maxmemory_mb,
        )
        self.memcached = LocalMemcached(
            self.supervisor, self.ports, count=c.memcached_nodes, memory_mb=c.memcached_memory_mb
        )
        self.timings: dict[str, float] = {}  # seconds to ready, per part and "total"

    # --- what the services see ------------------------------------------------------------------

    def addresses(self) -> Addresses:
        return Addresses(
            database=self.postgres.pgpool,
            redis_nodes=self.redis.nodes,
            memcached_nodes=self.memcached.nodes,
        )

    def secret_files(self) -> SecretFiles:
        return SecretFiles(
            database_password=str(self.postgres.app_password_file),
            redis_password=str(self.redis.password_file),
            jwt_secret=str(self.jwt_secret_file),
            reset_key=str(self.reset_key_file),
        )

    def service_environment(
        self, service: Service, environment: str = "local", ttl: CacheTtls | None = None
    ) -> dict[str, str]:
        """The environment ``service`` runs with, from the same function the GKE stack uses."""
        return service_environment(
            service, environment, self.addresses(), self.secret_files(), ttl or CacheTtls()
        )

    @property
    def processes(self) -> list[Process]:
        return self.supervisor.processes

    # --- start / stop ---------------------------------------------------------------------------

    def start(self) -> DataTier:
        began = time.monotonic()
        self._make_dirs()
        timeout = self.config.start_timeout_s
        parts: dict[str, Callable[[float], None]] = {
            "postgres": self._start_postgres,
            "redis": self.redis.start,
            "memcached": self.memcached.start,
        }
        pool = ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="data-tier")
        try:
            futures: list[Future[None]] = [
                pool.submit(self._timed, name, start, timeout, began)
                for name, start in parts.items()
            ]
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                if future.done() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
        except BaseException:
            self.stop()  # the other parts give up at their next check
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
        self.timings["total"] = round(time.monotonic() - began, 2)
        return self

    def stop(self) -> None:
        """Stop every process this tier started; pgpool first, so no failover is attempted."""
        try:
            self.postgres.stop_pgpool()
        finally:
            self.supervisor.stop()

    def __enter__(self) -> DataTier:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- point-in-time restore (stacks.local.backups) ------------------------------------------

    def prepare_restore(self, target: datetime | None) -> PreparedRestore:
        """Everything a restore does before it touches the live data: archive the current WAL,
        check ``target`` (None: that moment) against the recovery window, restore the newest
        backup before it next to the live data, and check that copy recovers to the target.
        The live cluster serves throughout; a refusal or a failure leaves it as it was."""
        backups = self._backups()
        archived_until = datetime.now(UTC)
        # A commit after every possible target: recovery stops at the first commit past its
        # target, and refuses to end short of it if the archive holds none (an idle database).
        primary = next(n for n in self.postgres.pool_nodes() if n.role == "primary")
        self.postgres.query(primary.address, "SELECT txid_current()")
        backups.tool.archive_now()
        window = backups.tool.window()
        target = target or archived_until
        if window.earliest is None:
            raise LocalPlatformError("no backup to restore from yet: take one (`make backup`)")
        if not window.earliest <= target <= archived_until:
            raise LocalPlatformError(
                f"{target.isoformat()} is outside the recovery window "
                f"{window.earliest.isoformat()} .. {archived_until.isoformat()}: choose a "
                "time in it (or --latest)"
            )
        copy = self.state_dir / "postgres" / "data" / "restore"
        backups.restore_copy(copy, target)
        facts = self.postgres.check_restored(copy, self.restore_check_port, backups.credentials)
        return PreparedRestore(target=target, data_dir=copy, facts=facts)

    def complete_restore(self, prepared: PreparedRestore) -> Path:
        """Swap the checked copy in (nothing may write meanwhile: stop the services first):
        the members' data directories are kept aside, in the directory this returns."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        kept = self.state_dir / "postgres" / f"before-restore-{stamp}"
        self.postgres.replace_data(prepared.data_dir, kept)
        return kept

    def flush_caches(self) -> None:
        """Empty Redis (every master; the replicas follow) and every Memcached node."""
        for node in self.redis.spec.nodes:
            client = redis.Redis(
                node.host, node.port, password=self.redis.password, socket_timeout=5
            )
            try:
                client.flushall()
            except redis.exceptions.ReadOnlyError:
                pass  # a replica: its master's flush reaches it
            except redis.RedisError as error:
                raise LocalPlatformError(f"Redis {node.name}: FLUSHALL: {error}") from None
            finally:
                client.close()
        for address in self.memcached.nodes:
            host, port = address.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=5) as conn:
                conn.sendall(b"flush_all\r\n")
                if not conn.recv(64).startswith(b"OK"):
                    raise LocalPlatformError(f"Memcached {address}: flush_all refused")

    def _backups(self) -> LocalBackups:
        if self.backups is None:
            raise LocalPlatformError("this data tier runs without backups (DataTierConfig)")
        return self.backups

    # --- internals ------------------------------------------------------------------------------

    def _start_postgres(self, timeout: float) -> None:
        """With backups: the store first (the primary archives from its first WAL segment),
        the stanza once the primary runs, before the standbys read the archive."""
        if self.backups is None:
            self.postgres.start(timeout)
            return
        deadline = time.monotonic() + timeout
        self.backups.start(timeout)
        self.postgres.start(
            max(1.0, deadline - time.monotonic()), after_primary=self.backups.create_stanza
        )

    def _timed(self, name: str, start: Callable[[float], None], timeout: float, t0: float) -> None:
        start(timeout)
        self.timings[name] = round(time.monotonic() - t0, 2)

    def _check_state_dir(self) -> None:
        d = self.state_dir
        running = recorded_processes(d / MANIFEST)
        if running:
            names = ", ".join(f"{p.name} (pid {p.pid})" for p in running)
            raise LocalPlatformError(
                f"a data tier started from {d} is still running: {names}; stop it first with "
                f"`python -m stacks.local.data_tier down {d}`"
            )
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            raise LocalPlatformError(
                f"the state directory {d} is not empty (left by an earlier run?): remove it "
                f"(`rm -rf {d}`) or choose an empty or new directory"
            )
        if not _SAFE_PATH.fullmatch(str(d)):
            raise LocalPlatformError(
                f"the state directory {d} may only contain letters, digits and _ . / @ : - "
                "(its paths go unquoted into pgpool and PostgreSQL command lines)"
            )
        socket = d / "postgres" / "pgpool" / "run" / ".s.PGSQL.65535.lock"
        if len(str(socket)) > _MAX_SOCKET_PATH:
            raise LocalPlatformError(
                f"the state directory {d} is too deep for Unix sockets ({socket} is longer "
                f"than {_MAX_SOCKET_PATH} bytes): choose a shorter path"
            )

    def _check_postgres_user(self) -> None:
        """As root the servers run as `postgres`, which must traverse every parent directory.

        (The state directory itself gets mode 0711 at start.) pytest's own temporary
        directories live in /tmp/pytest-of-<user>, mode 0700: the tests use mkdtemp instead.
        """
        user = self.postgres.user
        for parent in [p for p in self.state_dir.parents if p.exists()]:
            if not user.can_search(parent):
                raise LocalPlatformError(
                    f"the OS user {user.name} (PostgreSQL refuses root) cannot enter {parent}, "
                    f"a parent of the state directory {self.state_dir}: choose a state "
                    f"directory under world-searchable parents (or `chmod o+x {parent}`)"
                )

    def _make_dirs(self) -> None:
        # Others (the postgres user) may traverse the root, never list or read it.
        shared = not self.postgres.user.is_current
        make_dir(self.state_dir, mode=0o711 if shared else 0o700)
        make_dir(self.state_dir / "logs")
        make_dir(self.state_dir / "secrets")
        write_file(self.jwt_secret_file, new_password(64), mode=0o600)
        write_file(self.reset_key_file, new_password(64), mode=0o600)


# --- command line ---------------------------------------------------------------------------


def _up(state_dir: Path, config: DataTierConfig) -> None:
    def terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    with DataTier(state_dir, config) as tier:
        a, s = tier.addresses(), tier.secret_files()
        replicas = ", ".join(tier.postgres.replicas) or "none"
        print(f"data tier ready in {tier.timings['total']} s ({tier.timings})")
        print(f"  pgpool      {a.database}  (primary {tier.postgres.primary}; {replicas})")
        print(f"  redis       {', '.join(a.redis_nodes)}")
        print(f"  memcached   {', '.join(a.memcached_nodes)}")
        print(f"  passwords   {s.database_password}  {s.redis_password}")
        print(f"  logs        {state_dir / 'logs'}    Ctrl-C stops everything", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stacks.local.data_tier")
    parser.add_argument("command", choices=("up", "down"))
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("--pg-replicas", type=int, default=DataTierConfig.pg_replicas)
    parser.add_argument("--base-port", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            _up(
                args.state_dir,
                DataTierConfig(pg_replicas=args.pg_replicas, base_port=args.base_port),
            )
        else:
            stopped = stop_recorded(args.state_dir.absolute() / MANIFEST)
            print(f"stopped {len(stopped)} processes" if stopped else "nothing was running")
    except LocalPlatformError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # while starting: everything started is stopped already
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
