"""The whole platform on one machine: what ``make up``, ``make down`` and ``make status`` run.

``LocalPlatform(state_dir, PlatformConfig())`` composes, from the same service table, wiring
and configuration renderers as the GKE stacks:

1. the data tier (``DataTier``): PostgreSQL primary + replicas with synchronous replication
   behind PgPool-II, the Redis cluster, the Memcached nodes, sized like the stack config's
   defaults (``stacks.config``: 3 replicas, 3 + 3 Redis nodes, 3 Memcached nodes), and WAL
   archiving and backups through pgBackRest to a local S3 store (``stacks.local.backups``):
   the runner takes a backup every ``backup_interval_s`` and carries out the point-in-time
   restores ``python -m stacks.local restore`` asks for (``LocalPlatform.restore``);
2. the simulators of the outside parties (the payment providers, the warehouse), and the
   mail sink (``services.mailsink``, a real SMTP server) the user service sends reset e-mails to;
3. the jobs GKE runs as Jobs / CronJobs: migrations, the partition maintenance (then again
   every ``partition_interval_s`` from the runner, as the CronJob would), the demo catalog;
4. every service of ``SERVICE_TABLE`` (``Service.argv``, environment from
   ``stacks.wiring.service_environment``), several processes where asked (the product
   service, read heavy, gets two by default), the order service running the outbox relay and
   the saga / fulfilment consumers in-process (``RUN_WORKERS``, as on GKE);
5. the gateway: HAProxy with ``stacks.gateway.local_config`` (the same routes and rules as the
   Kubernetes config, static servers instead of DNS).

Everything lives under one state directory (``.local/`` in the checkout by default)::

    platform.json    what runs where, the runner's PID and state (starting/ready/failed/...)
    runner.log       the detached runner's output
    gateway/         haproxy.cfg and its admin socket
    tier/            the data tier's state: processes.json (every process, this runner's
                     included), logs/<process>.log, secrets/, postgres/, redis/

Why the project's own supervisor (``stacks.local.process``) rather than honcho, supervisord
or circus: (1) PostgreSQL and initdb refuse root and must run as ``postgres`` with the PID we
hold being the server itself (``runuser`` in between breaks fast shutdown, see process.py);
(2) start-up is a dependency graph with protocol-level readiness (a streaming synchronous
standby, pgpool seeing every node, a formed Redis cluster, each service's ``/readyz``) and
one-shot jobs between phases (migrate before the services, seed before the demo users),
which honcho cannot express and supervisord/circus only as "started"; (3) the restart policy
must know the roles: supervisord would restart a killed primary at once, where it boots as
the primary it was before PgPool-II has even noticed, racing the failover this platform
exists to exercise. Here a dead PostgreSQL member is restarted only once pgpool has detached
it and promoted another node, so it rejoins as a standby (``rejoin_member``); (4) ``down``
from another process must stop exactly our processes (PID + start time in a manifest), not
whatever holds a name. Those four would each need a plugin or wrapper around any of the
three tools; the supervisor here is ~400 lines the tests already exercise.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from components.conf.haproxy import RateLimit
from components.conf.pgpool import SPARE_CLIENTS
from components.conf.postgres import PgTuning
from components.memcached import MemcachedConfig
from components.postgres import PostgresConfig
from components.redis import RedisConfig
from services.kit.settings import Settings
from stacks.config import CacheTtls, SmtpConfig
from stacks.gateway import (
    DEFAULT_RATE_LIMIT,
    SERVER_MAXCONN,
    gateway_environment,
    local_config,
)
from stacks.local.apps import AppProcess, haproxy_servers, http_json, http_status
from stacks.local.backups import BackupType
from stacks.local.data_tier import MANIFEST, DataTier, DataTierConfig
from stacks.local.monitoring import LocalMonitoring
from stacks.local.ports import HOST, is_taken
from stacks.local.process import (
    LocalPlatformError,
    make_dir,
    new_password,
    pid_alive,
    write_file,
)
from stacks.local.state import ROOT, STATE_FILE, TIER_DIR, now_iso, start_ticks, write_json
from stacks.services import (
    GATEWAY_CONFIG,
    OUTSIDE_PARTIES,
    SERVICE_TABLE,
    SERVICES,
    Dependency,
    OutsideParty,
    Service,
    callees,
    users_of,
)
from stacks.wiring import SecretFiles, database_environment, job_environment, service_environment

ENVIRONMENT = "local"  # the services' ENVIRONMENT, as "prod" on GKE

DEFAULT_GATEWAY_PORT = 8080
DEFAULT_METRICS_PORT = 8404
DEMO_PRODUCTS = 10_000
DEMO_PASSWORD = "demo-password-1"  # public on purpose: local demo accounts only
DEMO_USERS = (
    ("alice@example.com", "Alice Demo"),
    ("bob@example.com", "Bob Demo"),
    ("carol@example.com", "Carol Demo"),
)
MAIL_SINK_USER = "shop"  # the sink wants SMTP AUTH, as a real relay does
RESTART_WINDOW_S = 60.0
PARTITION_RETRY_S = 60.0  # after a failed partition run (e.g. during a failover)
MEMBER_CHECK_S = 5.0  # how often pgpool's view of the members is read when all seems well
REATTACH_GRACE_S = 20.0  # a running member detached longer than this is looked at
MAX_REJOINS = 5  # restarts of one PostgreSQL member within 10 minutes
FULL_EVERY = 4  # of the scheduled backups (GKE: components.backups.BackupConfig's schedules)
BACKUP_RETRY_S = 60.0  # after a failed scheduled backup
RESTORE_REQUEST = "restore-request.json"  # `restore` asks the runner (it owns the processes)
RESTORE_RESULT = "restore-result.json"

# Each service process's database pool may grow to this many connections; the runner sets it
# (DATABASE_POOL_MAX) and sizes PgPool-II's children by it.
SERVICE_POOL_MAX: int = Settings.model_fields["database_pool_max"].default
# Per PostgreSQL member beyond pgpool's children: its health and replication checks.
SPARE_BACKENDS = 6


def _default_processes() -> dict[str, int]:
    # Reads dominate (catalog, search): two product processes; one of everything else is
    # plenty on two cores. `--processes` changes it.
    return {"product": 2}


@dataclass(frozen=True)
class PlatformConfig:
    processes: Mapping[str, int] = field(default_factory=_default_processes)  # else 1
    demo_products: int = DEMO_PRODUCTS  # 0: no demo data (no catalog, no demo users)
    gateway_port: int | None = DEFAULT_GATEWAY_PORT  # None: any free port
    metrics_port: int | None = DEFAULT_METRICS_PORT
    partition_interval_s: float = 3600.0
    # How often Prometheus scrapes and evaluates the rules (GKE: 30 s; shorter here, so a
    # drill sees its alert sooner; the alerts' holds are scaled to it).
    scrape_interval_s: float = 5.0
    # pgBackRest: WAL archived continuously, a backup every `backup_interval_s` (the first,
    # full, once the platform is ready), every FULL_EVERY-th of them full, the others
    # incremental, as GKE's daily full and 6-hourly incremental. None: no backups at all.
    backup_interval_s: float | None = 3600.0
    start_timeout_s: float = 300.0
    restart_limit: int = 5  # restarts of one process within RESTART_WINDOW_S, then give up
    # The gateway's per-client budget; None lifts it (a benchmark's load comes from one address).
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT
    # Requests in flight per service process at the gateway; the rest queue there (None: no cap).
    server_maxconn: int | None = SERVER_MAXCONN
    # Extra environment per service, over the wiring's (e.g. payment: VELOCITY_LIMIT).
    service_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(
            set(self.processes) - {s.name for s in SERVICE_TABLE if s.image == "service"}
        )
        if unknown:
            raise LocalPlatformError(
                f"--processes names unknown services: {', '.join(unknown)} (known: "
                f"{', '.join(s.name for s in SERVICE_TABLE if s.image == 'service')})"
            )
        unknown = sorted(
            set(self.service_env) - {s.name for s in SERVICE_TABLE if s.image == "service"}
        )
        if unknown:
            raise LocalPlatformError(f"--service-env names unknown services: {', '.join(unknown)}")
        bad = [f"{name}={n}" for name, n in self.processes.items() if not 1 <= n <= 8]
        if bad:
            raise LocalPlatformError(f"--processes: 1..8 per service, got {', '.join(bad)}")
        if self.demo_products < 0:
            raise LocalPlatformError("--products must be >= 0")
        for name, env in self.service_env.items():
            if not env.get("DATABASE_POOL_MAX", "1").isdigit():
                raise LocalPlatformError(
                    f"--service-env {name}:DATABASE_POOL_MAX: expected a number"
                )

    def processes_of(self, service: Service) -> int:
        return self.processes.get(service.name, 1)

    def pool_max_of(self, service: Service) -> int:
        """DATABASE_POOL_MAX of each of the service's processes (``service_env`` may set it)."""
        return int(
            self.service_env.get(service.name, {}).get("DATABASE_POOL_MAX", SERVICE_POOL_MAX)
        )


def connection_budget(config: PlatformConfig) -> tuple[int, int]:
    """(pgpool children, max_connections per member) so every pool can reach full size.

    A pgpool child serves one client connection at a time and the services' pools are
    persistent: with fewer children than pooled connections, a pool growing under load
    would wait forever for a child. One cached backend per child (all clients use one
    role and database), so each member needs a backend per child, plus its own checks."""
    pools = sum(
        config.processes_of(s) * config.pool_max_of(s) for s in users_of(Dependency.POSTGRES)
    )
    children = pools + SPARE_CLIENTS
    reserved = PgTuning.tiny().superuser_reserved_connections  # scripts, psql as superuser
    return children, children + reserved + SPARE_BACKENDS


def data_tier_config(config: PlatformConfig) -> DataTierConfig:
    """The stack config's topology (stacks.config defaults), with local sizes."""
    pg, redis, memcached = PostgresConfig(), RedisConfig(), MemcachedConfig()
    children, max_connections = connection_budget(config)
    return DataTierConfig(
        pg_replicas=pg.replicas,
        pg_synchronous_standbys=pg.synchronous_standbys,
        pgpool_children=children,
        pgpool_max_pool=1,
        pg_max_connections=max_connections,
        redis_masters=redis.masters,
        redis_replicas_per_master=redis.replicas_per_master,
        memcached_nodes=memcached.nodes,
        backups=config.backup_interval_s is not None,
        start_timeout_s=min(120.0, config.start_timeout_s),
    )


# --- the platform -------------------------------------------------------------------------------


class LocalPlatform:
    def __init__(self, state_dir: Path | str, config: PlatformConfig | None = None) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.config = c = config or PlatformConfig()
        if self.state_dir.is_dir():  # as start() would: the postgres user traverses it to tier/
            self.state_dir.chmod(0o711)
        # Checks the programs, the state directory and the postgres user before anything.
        self.tier = DataTier(self.state_dir / TIER_DIR, data_tier_config(c))
        self.supervisor = self.tier.supervisor  # one manifest for every process of the platform
        ports = self.tier.ports
        self.gateway_port = self._take_fixed_port("gateway", c.gateway_port, "--port")
        self.metrics_port = self._take_fixed_port(
            "gateway metrics", c.metrics_port, "--metrics-port"
        )
        self.gateway_dir = self.state_dir / "gateway"
        self.gateway_config = self.gateway_dir / "haproxy.cfg"
        self.stats_socket = self.gateway_dir / "admin.sock"
        self.state_file = self.state_dir / STATE_FILE
        secrets = self.tier.state_dir / "secrets"
        python = [sys.executable, "-u", "-m"]

        # The outside parties' stand-ins, each with its own credentials: Stripe's secret key,
        # PayPal's OAuth2 client_id:secret (services.payment.providers), the warehouse's key.
        self.outside_keys: dict[OutsideParty, str] = {
            "stripe": new_password(),
            "paypal": f"{new_password(16)}:{new_password()}",
            "warehouse": new_password(),
        }
        self.outside_key_files = {party: secrets / f"{party}-api-key" for party in OUTSIDE_PARTIES}
        self.simulators: dict[OutsideParty, AppProcess] = {}
        for party in OUTSIDE_PARTIES:
            port = ports.take(f"{party} simulator")
            module = (
                ("services.order.warehouse_simulator",)
                if party == "warehouse"
                else ("services.payment.simulators", "--kind", party)
            )
            self.simulators[party] = AppProcess(
                name=f"{party}-simulator",
                kind="simulator",
                argv=[
                    *python,
                    *module,
                    *("--port", str(port), "--api-key", self.outside_keys[party]),
                ],
                env={"PYTHONUNBUFFERED": "1"},
                port=port,
                ready_url=f"http://{HOST}:{port}/_sim/behaviour",
            )

        # The mail relay's stand-in: the reset e-mails land in its mailbox (GET /messages).
        self.smtp_password = new_password()
        self.smtp_password_file = secrets / "smtp-password"
        smtp_port, mailbox_port = ports.take("mail sink"), ports.take("mail sink http")
        self.smtp = SmtpConfig().model_copy(
            update={"host": HOST, "port": smtp_port, "security": "none", "user": MAIL_SINK_USER}
        )
        self.mail_sink = AppProcess(
            name="mail-sink",
            kind="sink",
            argv=[
                *python,
                "services.mailsink",
                *("--port", str(smtp_port), "--http-port", str(mailbox_port)),
                *("--user", MAIL_SINK_USER, "--password-file", str(self.smtp_password_file)),
            ],
            env={"PYTHONUNBUFFERED": "1"},
            port=smtp_port,
            ready_url=f"http://{HOST}:{mailbox_port}/messages",
        )

        # Every service of the table, n processes each on ports of their own.
        service_ports = {
            svc.name: [ports.take(f"{svc.name}-{i}") for i in range(c.processes_of(svc))]
            for svc in SERVICE_TABLE
            if svc.image == "service"
        }
        self.services: dict[str, list[AppProcess]] = {}
        for svc in SERVICE_TABLE:
            if svc.image != "service":
                continue
            self.services[svc.name] = [
                AppProcess(
                    name=f"{svc.name}-{i}",
                    kind="service",
                    argv=[*python, *svc.argv[2:]]
                    if svc.argv[:2] == ("python", "-m")
                    else list(svc.argv),
                    env=self._service_env(svc, i, port, service_ports),
                    port=port,
                    ready_url=f"http://{HOST}:{port}/readyz",
                )
                for i, port in enumerate(service_ports[svc.name])
            ]

        gateway = SERVICES["gateway"]
        self.gateway = AppProcess(
            name="gateway",
            kind="gateway",
            # The table's command, with the local config file in place of the pod's path.
            argv=[str(self.gateway_config) if a == GATEWAY_CONFIG else a for a in gateway.argv],
            env={},  # the signing key is added at start, once the tier has written it
            port=self.gateway_port,
            ready_url=f"http://{HOST}:{self.gateway_port}/healthz",
        )
        # Prometheus, Alertmanager, the exporters and the alert sink (stacks.local.monitoring).
        self.monitoring = LocalMonitoring(
            self.state_dir, self.tier, self.services, self.metrics_port, c.scrape_interval_s
        )
        self.timings: dict[str, float] = {}
        self.partitions: dict[str, Any] = {"every_s": c.partition_interval_s}
        self.demo_users: list[str] = []
        self._stop = threading.Event()
        self._healing: dict[str, threading.Thread] = {}  # PostgreSQL member -> rejoin/attach
        self._rejoins: dict[str, list[float]] = {}  # member -> when it was restarted
        self._detached: dict[str, float] = {}  # running member -> since when pgpool left it out
        self._next_look = 0.0
        self._state = "new"
        self._error: str | None = None
        self.backup_schedule: dict[str, Any] = {"every_s": c.backup_interval_s, "taken": 0}
        self._backup_thread: threading.Thread | None = None

    # --- addresses --------------------------------------------------------------------------

    @property
    def gateway_url(self) -> str:
        return f"http://{HOST}:{self.gateway_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.metrics_port}/metrics"

    def apps(self) -> list[AppProcess]:
        """Every process the runner adds to the data tier, in start order."""
        found = [*self.simulators.values(), self.mail_sink]
        for processes in self.services.values():
            found += processes
        return [*found, self.gateway, *self.monitoring.apps()]

    def _take_fixed_port(self, what: str, port: int | None, flag: str) -> int:
        if port is not None and is_taken(port):
            raise LocalPlatformError(
                f"port {port} on {HOST} ({what}) is already taken by another process: stop it "
                f"(`ss -ltnp 'sport = :{port}'` names it) or run on another port: "
                f"`make up ARGS='{flag} {port + 1}'` (0 picks any free port)"
            )
        return self.tier.ports.take(what, fixed=port)

    def _service_env(
        self, svc: Service, index: int, port: int, ports: Mapping[str, list[int]]
    ) -> dict[str, str]:
        """The GKE wiring function, with local addresses. A caller's process i talks to the
        callee's process i mod n: the local stand-in for a ClusterIP Service's balancing."""
        peers = {
            callee.name: f"http://{HOST}:{ports[callee.name][index % len(ports[callee.name])]}"
            for callee in callees(svc.name)
            if callee.name in ports
        }
        addresses = replace(
            self.tier.addresses(),
            services=peers,
            external={party: f"http://{HOST}:{sim.port}" for party, sim in self.simulators.items()},
        )
        secrets: SecretFiles = replace(
            self.tier.secret_files(),
            external_keys={party: str(path) for party, path in self.outside_key_files.items()},
            smtp_password=str(self.smtp_password_file),
        )
        # The pool size connection_budget sized pgpool for.
        env = service_environment(
            svc,
            ENVIRONMENT,
            addresses,
            secrets,
            CacheTtls(),
            database_pool=self.config.pool_max_of(svc),
            smtp=self.smtp,
        )
        env["PORT"] = str(port)
        env["PYTHONUNBUFFERED"] = "1"  # logs reach logs/<process>.log as they happen
        env.update(self.config.service_env.get(svc.name, {}))
        return env

    def _job_env(self, name: str) -> dict[str, str]:
        database = database_environment(
            self.tier.addresses().database, str(self.tier.postgres.app_password_file)
        )
        return {**job_environment(name, ENVIRONMENT, database), "PYTHONUNBUFFERED": "1"}

    # --- start ------------------------------------------------------------------------------

    def start(self, progress: Callable[[str], None] = print) -> LocalPlatform:
        """Bring everything up in dependency order; on any failure stop what started."""
        began = time.monotonic()
        deadline = began + self.config.start_timeout_s
        make_dir(self.state_dir, mode=0o711)  # the postgres user traverses it to tier/
        self._write_state("starting")
        t = self.tier.config
        try:
            # The simulators boot while the tier does (their logs go where the tier's do).
            make_dir(self.tier.state_dir, mode=0o711)
            make_dir(self.tier.state_dir / "logs")
            self._start_apps(list(self.simulators.values()))
            self._phase(
                f"data tier (PostgreSQL 1+{t.pg_replicas}, PgPool-II, Redis "
                f"{t.redis_masters}+{t.redis_masters * t.redis_replicas_per_master}, "
                f"Memcached {t.memcached_nodes})",
                self.tier.start,
                progress,
            )
            for party, path in self.outside_key_files.items():
                write_file(path, self.outside_keys[party], mode=0o600)
            write_file(self.smtp_password_file, self.smtp_password, mode=0o600)
            self._phase(
                "migrations", lambda: self.run_job("migrate", ["services.kit.migrate"]), progress
            )
            self._phase("partitions", self.run_partitions, progress)
            if self.config.demo_products:
                self._phase(
                    f"demo catalog ({self.config.demo_products:,} products)",
                    lambda: self.run_job(
                        "seed",
                        ["services.maintenance.seed", "--products", str(self.config.demo_products)],
                    ),
                    progress,
                )
            self._phase(
                "services", lambda: self._start_and_wait(self._service_apps(), deadline), progress
            )
            self._phase("gateway", lambda: self._start_gateway(deadline), progress)
            self._phase(
                "monitoring (Prometheus, Alertmanager, exporters)",
                lambda: self._start_monitoring(deadline),
                progress,
            )
            if self.config.demo_products:
                self._phase("demo users", self._register_demo_users, progress)
        except BaseException as error:
            self._error = str(error) if not isinstance(error, KeyboardInterrupt) else None
            self._write_state("failed" if self._error else "stopping")
            with contextlib.suppress(LocalPlatformError):
                self.stop()
            raise
        self.timings["total"] = round(time.monotonic() - began, 1)
        self._write_state("ready")
        return self

    def _phase(
        self, what: str, step: Callable[[], object], progress: Callable[[str], None]
    ) -> None:
        began = time.monotonic()
        progress(f"  {what} ...")
        step()
        self.timings[what.split(" (")[0]] = took = round(time.monotonic() - began, 1)
        progress(f"  {what}: ready in {took} s")

    def _service_apps(self) -> list[AppProcess]:
        """The services and the outside parties' stand-ins (the sink starts with them, once
        its password file is written)."""
        return [
            *self.simulators.values(),
            self.mail_sink,
            *(p for ps in self.services.values() for p in ps),
        ]

    def _start_apps(self, apps: Sequence[AppProcess]) -> None:
        for app in apps:
            if app.process is None:
                app.process = self.supervisor.start(app.name, app.argv, env=app.env, cwd=ROOT)

    def _start_and_wait(self, apps: Sequence[AppProcess], deadline: float) -> None:
        self._start_apps(apps)
        for app in apps:
            assert app.process is not None
            self.supervisor.wait_until(
                lambda app=app: http_status(app.ready_url) == 200,
                process=app.process,
                what=f"{app.name} on {app.ready_url}",
                timeout=max(1.0, deadline - time.monotonic()),
                interval=0.2,
            )

    def _start_monitoring(self, deadline: float) -> None:
        self.monitoring.write_files()
        self._start_and_wait(self.monitoring.apps(), deadline)

    def _start_gateway(self, deadline: float) -> None:
        make_dir(self.gateway_dir)
        servers = {name: [(HOST, p.port) for p in ps] for name, ps in self.services.items()}
        routed = {s.name for s in SERVICE_TABLE if s.route}
        config = local_config(
            {name: s for name, s in servers.items() if name in routed},
            port=self.gateway_port,
            metrics_port=self.metrics_port,
            stats_socket=str(self.stats_socket),
            rate_limit=self.config.rate_limit,
            server_maxconn=self.config.server_maxconn,
        )
        write_file(self.gateway_config, config, mode=0o600)
        self.gateway.env = gateway_environment(self.tier.jwt_secret_file)
        self._start_apps([self.gateway])
        assert self.gateway.process is not None

        self._wait_gateway_serving(deadline)

    def _wait_gateway_serving(self, deadline: float) -> None:
        """Until the gateway answers and its health checks have every server UP."""
        assert self.gateway.process is not None

        def serving() -> bool:
            if http_status(self.gateway.ready_url) != 200:
                return False
            states = haproxy_servers(self.stats_socket)
            return bool(states) and all(s.startswith("UP") for s in states.values())

        self.supervisor.wait_until(
            serving,
            process=self.gateway.process,
            what=f"the gateway on {self.gateway_url} with every server UP",
            timeout=max(1.0, deadline - time.monotonic()),
            interval=0.2,
        )

    def _register_demo_users(self) -> None:
        for email, name in DEMO_USERS:
            status, body = http_json(
                f"{self.gateway_url}/api/users/register",
                {"email": email, "password": DEMO_PASSWORD, "full_name": name},
            )
            if status != 202:  # alike for a new and a known address
                raise LocalPlatformError(f"registering demo user {email}: {status} {body}")
            self.demo_users.append(email)

    # --- jobs -------------------------------------------------------------------------------

    def run_job(self, name: str, module_argv: Sequence[str], timeout: float = 120.0) -> str:
        """Run a one-shot job (what GKE runs as a Job) to completion; its last output line."""
        process = self.supervisor.start(
            f"job-{name}",
            [sys.executable, "-u", "-m", *module_argv],
            env=self._job_env(name),
            cwd=ROOT,
        )
        code = process.wait(timeout)
        if code != 0:
            error = process.failure(f"job {name} failed (exit code {code})")
            self.supervisor.forget(process)
            raise error
        last = process.log_tail(1)
        self.supervisor.forget(process)
        return last

    def run_partitions(self) -> None:
        """The partition CronJob's command, run by the runner on its schedule."""
        ahead = PostgresConfig().partitions_ahead_months
        try:
            result = self.run_job(
                "partitions", ["services.maintenance.partitions", "--ahead", str(ahead)]
            )
        except LocalPlatformError as error:
            self.partitions |= {
                "last_run": now_iso(),
                "last_result": f"failed: {error}".split("\n")[0],
            }
            raise
        runs = self.partitions.get("runs", 0) + 1
        self.partitions |= {"last_run": now_iso(), "last_result": result, "runs": runs}

    # --- running ----------------------------------------------------------------------------

    def run(self, stop: threading.Event, log: Callable[[str], None] = print) -> None:
        """Until ``stop`` is set: restart crashed processes, rejoin stopped PostgreSQL
        members once pgpool has failed over, run the partition job and the backups on their
        schedules, and carry out a restore `python -m stacks.local restore` asks for."""
        next_partitions = time.monotonic() + self.config.partition_interval_s
        next_backup = time.monotonic()  # the first, full, at once
        while not stop.wait(1.0):
            self.check_once(log)
            if (request := self.state_dir / RESTORE_REQUEST).exists():
                self._serve_restore(request, log)
            if time.monotonic() >= next_partitions:
                try:
                    self.run_partitions()
                    next_partitions += self.config.partition_interval_s
                    log(f"partition maintenance: {self.partitions['last_result']}")
                except LocalPlatformError as error:
                    retry = min(PARTITION_RETRY_S, self.config.partition_interval_s)
                    next_partitions = time.monotonic() + retry
                    log(f"partition maintenance failed, retrying in {retry:.0f} s: {error}")
                self._write_state(self._state)
            interval = self.config.backup_interval_s
            if interval is not None and time.monotonic() >= next_backup and not self._backing_up:
                kind: BackupType = (
                    "full" if self.backup_schedule["taken"] % FULL_EVERY == 0 else "incr"
                )
                self._backup_thread = threading.Thread(
                    target=self._scheduled_backup, args=(kind, log), name="backup", daemon=True
                )
                self._backup_thread.start()
                next_backup = time.monotonic() + interval

    @property
    def _backing_up(self) -> bool:
        return self._backup_thread is not None and self._backup_thread.is_alive()

    def _scheduled_backup(self, kind: BackupType, log: Callable[[str], None]) -> None:
        assert self.tier.backups is not None
        began = time.monotonic()
        try:
            backup = self.tier.backups.tool.backup(kind)
        except LocalPlatformError as error:
            self.backup_schedule["last_error"] = str(error)
            log(f"scheduled {kind} backup failed (the next one is on schedule): {error}")
            return
        self.backup_schedule["taken"] += 1
        self.backup_schedule["last_error"] = None
        log(
            f"backup {backup.label} ({backup.type}, {backup.stored_bytes / 1e6:.1f} MB stored) "
            f"in {time.monotonic() - began:.1f} s"
        )
        self._write_state(self._state)

    # --- point-in-time restore -----------------------------------------------------------------

    def restore(
        self, target: datetime | None, log: Callable[[str], None] = print
    ) -> dict[str, Any]:
        """Restore the database to ``target`` (None: the latest moment archived).

        1. restore the newest backup before the target next to the live data and check the
           copy reaches the target (the platform keeps serving; a failure here changes
           nothing);
        2. stop the services, swap the copy in (the old data directories are kept), promote
           it, re-clone the standbys, bring PgPool-II back;
        3. empty the caches (they hold what the database no longer has: carts, catalog
           entries, sold-out hints; the platform is built to lose them), start the services.
        The report: each step with its seconds, the target, what the copy held."""
        steps: list[dict[str, Any]] = []

        def step(name: str, action: Callable[[], Any]) -> Any:
            log(f"restore: {name} ...")
            began = time.monotonic()
            result = action()
            steps.append({"step": name, "seconds": round(time.monotonic() - began, 1)})
            log(f"restore: {name}: {steps[-1]['seconds']} s")
            return result

        if self._backup_thread is not None:
            self._backup_thread.join(timeout=600)  # a backup reads a standby we will stop
        began = time.monotonic()
        prepared = step(
            "restore the backup next to the live data and check it reaches the target",
            lambda: self.tier.prepare_restore(target),
        )
        services = self._service_apps()
        step("stop the services", lambda: self._stop_apps(services))
        try:
            kept = step(
                "swap the restored data in, promote it, re-clone the standbys, restart PgPool-II",
                lambda: self.tier.complete_restore(prepared),
            )
            step("empty the caches (Redis, Memcached)", self.tier.flush_caches)
        finally:  # whatever happened, the services come back (to a database or to 503s)
            step(
                "start the services",
                lambda: self._start_and_wait(services, time.monotonic() + 120),
            )
            self._write_state(self._state)
        # Done once shoppers get through again: the gateway's health checks see every server.
        step(
            "wait for the gateway to route to every service",
            lambda: self._wait_gateway_serving(time.monotonic() + 60),
        )
        return {
            "target": prepared.target.isoformat(),
            "last_transaction": prepared.facts["last_transaction"],
            "orders": int(prepared.facts["orders"]),
            "kept": str(kept),
            "steps": steps,
            "seconds": round(time.monotonic() - began, 1),
        }

    def _stop_apps(self, apps: Sequence[AppProcess]) -> None:
        live = [a.process for a in apps if a.process is not None]
        self.supervisor.stop(live, timeout=15)
        for app in apps:
            app.process = None  # not crashed: check_once leaves them be

    def _serve_restore(self, request: Path, log: Callable[[str], None]) -> None:
        asked = json.loads(request.read_text())
        request.unlink()
        target = datetime.fromisoformat(asked["target"]) if asked.get("target") else None
        try:
            result: dict[str, Any] = {"id": asked["id"], "ok": True, **self.restore(target, log)}
        except LocalPlatformError as error:
            log(f"restore refused or failed: {error}")
            result = {"id": asked["id"], "ok": False, "error": str(error)}
        write_json(self.state_dir / RESTORE_RESULT, result)

    def check_once(self, log: Callable[[str], None] = print) -> None:
        for app in self.apps():
            process = app.process
            if process is None or app.gave_up or process.running() or self._stop.is_set():
                continue
            now = time.monotonic()
            app.restarts = [t for t in app.restarts if now - t < RESTART_WINDOW_S]
            if len(app.restarts) >= self.config.restart_limit:
                app.gave_up = True
                log(
                    f"{app.name} exited ({process.exit_status()}) {len(app.restarts)} times "
                    f"within {RESTART_WINDOW_S:.0f} s: not restarting it; see {process.log}"
                )
                continue
            log(f"{app.name} exited ({process.exit_status()}): restarting it")
            self.supervisor.forget(process)
            app.process = None
            app.restarts.append(now)
            self._start_apps([app])
        self._heal_members(log)

    def _heal_members(self, log: Callable[[str], None]) -> None:
        """PostgreSQL members pgpool has detached: rejoin the stopped ones, attach the running
        standbys it left out.

        pgpool alone decides failover: a stopped member is restarted only once pgpool has
        detached it and another node is the live primary (earlier, an old primary would boot
        as the primary it was). A running member that stays detached for REATTACH_GRACE_S
        (an attach that failed, a follow_primary.sh that gave up) is attached if it streams
        from the primary; a fenced old primary never does, so it stays out."""
        pg = self.tier.postgres
        now = time.monotonic()
        busy = {name for name, t in self._healing.items() if t.is_alive()}
        members = [m for m in pg.topology.members if m.name not in busy]
        stopped = {m.name for m in members if (p := pg.member_process(m.name)) and not p.running()}
        if self._stop.is_set() or (not stopped and not self._detached and now < self._next_look):
            return
        self._next_look = now + MEMBER_CHECK_S
        try:
            nodes = pg.pool_nodes()
        except LocalPlatformError:
            return  # pgpool busy (restarting its children after a failover): next round
        if not any(n.role == "primary" and n.status != "down" for n in nodes):
            return  # a failover is under way, or no primary: pgpool decides
        for member in members:
            node = nodes[pg.topology.members.index(member)]
            if node.status != "down":
                self._detached.pop(member.name, None)
                continue
            if member.name in stopped:
                tries = [t for t in self._rejoins.get(member.name, []) if now - t < 600]
                if len(tries) >= MAX_REJOINS or (tries and now - tries[-1] < 10 * len(tries)):
                    continue  # back off; give up after MAX_REJOINS in 10 minutes
                self._rejoins[member.name] = [*tries, now]
                log(f"PostgreSQL {member.name} stopped and pgpool detached it: rejoining it")
                self._heal(member.name, lambda n=member.name: pg.rejoin_member(n), log)
            elif now - self._detached.setdefault(member.name, now) >= REATTACH_GRACE_S:
                self._detached[member.name] = now

                def attach(name: str = member.name) -> None:
                    if not pg.attach_if_following(name):
                        raise LocalPlatformError("it does not stream from the primary")

                self._heal(member.name, attach, log)

    def _heal(self, name: str, action: Callable[[], None], log: Callable[[str], None]) -> None:
        def run() -> None:
            try:
                action()
                log(f"PostgreSQL {name} is a standby of the primary and attached again")
            except Exception as error:  # a thread must say why it stopped, whatever it was
                log(f"PostgreSQL {name} stays detached: {error}")

        thread = threading.Thread(target=run, name=f"heal-{name}", daemon=True)
        self._healing[name] = thread
        thread.start()

    # --- stop -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything: the gateway, then the services and simulators, then the tier."""
        self._stop.set()
        if self._state not in ("failed",):
            self._write_state("stopping")
        errors: list[LocalPlatformError] = []
        groups = [self.monitoring.apps(), [self.gateway], self._service_apps()]
        for group in groups:
            live = [a.process for a in group if a.process is not None]
            try:
                self.supervisor.stop(live, timeout=15)
            except LocalPlatformError as error:
                errors.append(error)
        for thread in self._healing.values():
            thread.join(timeout=1)
        try:
            self.tier.stop()
        except LocalPlatformError as error:
            errors.append(error)
        self._write_state("failed" if self._state == "failed" else "stopped")
        if errors:
            raise errors[0]

    # --- the state file (read by `status`, `down` and the tests) ------------------------------

    def _write_state(self, state: str) -> None:
        self._state = state
        if not self.state_dir.exists():
            return
        pg, redis, memcached = self.tier.postgres, self.tier.redis, self.tier.memcached
        components: list[dict[str, Any]] = []
        for m in pg.topology.members:
            components.append({"name": m.name, "kind": "postgres", "address": m.address})
        components.append({"name": "pgpool", "kind": "pgpool", "address": pg.pgpool})
        for node in redis.spec.nodes:
            components.append({"name": node.name, "kind": "redis", "address": node.endpoint})
        for name, port in memcached.ports.items():
            components.append({"name": name, "kind": "memcached", "address": f"{HOST}:{port}"})
        if backups := self.tier.backups:  # the S3 API, and the TLS pgBackRest speaks to it
            for name, port in (
                ("object-store", backups.store_port),
                ("object-store-tls", backups.tls_port),
            ):
                components.append({"name": name, "kind": "store", "address": f"{HOST}:{port}"})
        for app in self.apps():
            components.append(
                {"name": app.name, "kind": app.kind, "address": app.address, "url": app.ready_url}
            )
        order = self.services.get("order", [])
        if order:
            components.append(
                {
                    "name": "outbox relay + saga workers",
                    "kind": "workers",
                    "address": f"in {', '.join(p.name for p in order)} (RUN_WORKERS)",
                }
            )
        schedule = f"every {self.config.partition_interval_s:.0f} s from the runner"
        components.append({"name": "partition maintenance", "kind": "job", "address": schedule})
        runner_stat = pid_alive(os.getpid())
        data = {
            "state": state,
            "error": self._error,
            "runner": {"pid": os.getpid(), "start_ticks": start_ticks(os.getpid())}
            if runner_stat
            else None,
            "gateway": self.gateway_url,
            "gateway_metrics": self.metrics_url,
            "prometheus": self.monitoring.prometheus_url,
            "alertmanager": self.monitoring.alertmanager_url,
            "alert_sink": self.monitoring.sink_url,
            "stats_socket": str(self.stats_socket),
            "timings": self.timings,
            "components": components,
            "ports": dict(self.tier.ports.assigned),
            "demo_users": self.demo_users,
            "demo_password": DEMO_PASSWORD if self.demo_users else None,
            "partitions": self.partitions,
            "backups": {**self.tier.backups.state(), "schedule": self.backup_schedule}
            if self.tier.backups
            else None,
            "pgpass": str(pg.pgpass),
            "redis_password_file": str(redis.password_file),
            "jwt_secret_file": str(self.tier.jwt_secret_file),
            "manifest": str(self.tier.state_dir / MANIFEST),
            "logs": str(self.tier.state_dir / "logs"),
        }
        write_json(self.state_file, data)
