"""PgPool-II 4.3 configuration: pgpool.conf, pool_hba.conf, pcp.conf, pool_passwd, pcppass.

Backends come from the same ``PgTopology`` as postgresql.conf; failover is delegated to the
SQL-only scripts in ``scripts.py``, with everything they need rendered into the command line
so the pgpool process itself needs no special environment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_network

from components.conf.postgres import (
    PgTopology,
    PgTuning,
    PgUsers,
    Setting,
    check_token,
    escape_colon_field,
    pgpass,
    render_settings,
)
from components.conf.scripts import (
    FAILOVER_ARGS,
    FAILOVER_SH,
    FOLLOW_PRIMARY_ARGS,
    FOLLOW_PRIMARY_SH,
    failover_env,
    failover_sh,
    follow_primary_sh,
)

# What pgpool_secret_files renders: these belong in a Secret, never in a ConfigMap.
_SECRET_FILES = ("pool_passwd", "pcp.conf", "pcppass", "pgpass")


@dataclass(frozen=True)
class PgpoolNode:
    """One pgpool instance, as its watchdog peers reach it (k8s: pgpool-N.<service>)."""

    host: str
    port: int = 9999
    wd_port: int = 9000
    heartbeat_port: int = 9694

    def __post_init__(self) -> None:
        check_token(self.host, "pgpool host")


@dataclass(frozen=True)
class HealthCheck:
    """Backend health checks; their worst case bounds how long a dead primary goes unnoticed."""

    period_s: int = 5
    timeout_s: int = 3
    max_retries: int = 2
    retry_delay_s: int = 2

    @property
    def worst_case_detection_s(self) -> int:
        """A black-holed primary: wait for the next check, then every attempt times out."""
        attempts = self.max_retries + 1
        return self.period_s + attempts * self.timeout_s + self.max_retries * self.retry_delay_s


@dataclass(frozen=True)
class PgpoolSettings:
    """One pgpool deployment. Defaults: the GKE container (Debian pgpool2 + postgresql-client)."""

    port: int = 9999
    pcp_port: int = 9898
    listen_addresses: str = "*"
    pcp_listen_addresses: str = ""  # pcp over the Unix socket only: it can detach backends
    conf_dir: str = "/etc/pgpool2"  # pgpool.conf, pool_hba.conf, pgpool_node_id
    secrets_dir: str = "/etc/pgpool2/secrets"  # pool_passwd, pcp.conf, pcppass, pgpass
    scripts_dir: str = "/etc/pgpool2/scripts"
    run_dir: str = "/var/run/pgpool"  # sockets, pid file, watchdog IPC socket
    log_dir: str = "/var/log/pgpool"  # pgpool_status: which backends were detached
    bin_dir: str | None = "/usr/sbin"  # pcp_attach_node (Debian pgpool2); None: from PATH
    pcp_user: str = "pcp_admin"
    # 50 children x 4 cached backend connections each (the architecture's seed numbers).
    num_init_children: int = 50
    max_pool: int = 4
    # Share of SELECTs the primary serves. Routed by role (redirect list), not by per-node
    # weight: weights belong to node slots and would follow the wrong node after a failover.
    primary_read_share: float = 0.0
    delay_threshold_bytes: int = 16 * 1024 * 1024  # a standby lagging more serves no reads
    health: HealthCheck = field(default_factory=HealthCheck)
    sr_check_period_s: int = 5
    search_primary_node_timeout_s: int = 300
    # Empty: one pgpool, no watchdog. 3 or more: watchdog with quorum and consensus.
    watchdog_nodes: tuple[PgpoolNode, ...] = ()

    def __post_init__(self) -> None:
        for what in ("conf_dir", "secrets_dir", "scripts_dir", "run_dir", "log_dir"):
            check_token(getattr(self, what), what)
        if self.bin_dir is not None:
            check_token(self.bin_dir, "bin_dir")
        if not 0.0 <= self.primary_read_share <= 1.0:
            raise ValueError("primary_read_share must be within [0, 1]")
        if len(self.watchdog_nodes) in (1, 2):
            # One node needs no watchdog; two cannot form a majority once one is lost.
            raise ValueError("watchdog_nodes: give none (single pgpool) or at least 3")

    @property
    def uses_watchdog(self) -> bool:
        return bool(self.watchdog_nodes)

    @property
    def pgpool_count(self) -> int:
        return max(1, len(self.watchdog_nodes))

    def path(self, name: str) -> str:
        """Where each file this module renders is expected on the pgpool host."""
        if name in _SECRET_FILES:
            return f"{self.secrets_dir}/{name}"
        if name in (FAILOVER_SH, FOLLOW_PRIMARY_SH):
            return f"{self.scripts_dir}/{name}"
        return f"{self.conf_dir}/{name}"


def backend_connections_needed(settings: PgpoolSettings) -> int:
    """Connections every pgpool together may open to one backend at worst."""
    return settings.num_init_children * settings.max_pool * settings.pgpool_count


# PgPool-II clients beyond the services' pools: migrations, the partition job, drills.
SPARE_CLIENTS = 8


def check_connection_budget(settings: PgpoolSettings, tuning: PgTuning) -> None:
    """Raise if pgpool could exhaust a backend's max_connections (the classic pgpool outage)."""
    usable = tuning.max_connections - tuning.superuser_reserved_connections
    needed = backend_connections_needed(settings)
    if needed > usable:
        raise ValueError(
            f"pgpool may open {needed} connections per backend but max_connections leaves "
            f"{usable}: lower num_init_children/max_pool or raise max_connections"
        )


def _command(settings: PgpoolSettings, env: Mapping[str, str], script: str, args: str) -> str:
    assignments = " ".join(f"{k}={v}" for k, v in env.items())
    return f"{assignments} sh {settings.path(script)} {args}"


def _redirect_list(settings: PgpoolSettings) -> str:
    if settings.primary_read_share >= 1.0:
        return ".*:primary"
    return f".*:standby({round(1.0 - settings.primary_read_share, 3)})"


def pgpool_conf(topology: PgTopology, users: PgUsers, settings: PgpoolSettings) -> str:
    """pgpool.conf for PgPool-II 4.3+ in streaming-replication mode."""
    s = settings
    env = failover_env(
        topology,
        users,
        pgpassfile=s.path("pgpass"),
        pcp_host=s.run_dir,
        pcp_port=s.pcp_port,
        pcp_user=s.pcp_user,
        pcppassfile=s.path("pcppass"),
        pgpool_bin_dir=s.bin_dir,
    )
    backends: dict[str, Setting] = {}
    for i, m in enumerate(topology.members):
        backends |= {
            f"backend_hostname{i}": m.host,
            f"backend_port{i}": m.port,
            f"backend_weight{i}": 1,
            f"backend_data_directory{i}": topology.data_dir_of(m),
            f"backend_flag{i}": "ALLOW_TO_FAILOVER",
            # Matches the standby's application_name: SHOW pool_nodes then shows its state.
            f"backend_application_name{i}": m.name,
        }
    header = "# Rendered by components/conf/pgpool.py; do not edit by hand.\n"
    return header + render_settings(
        [
            (
                "connections",
                {
                    "backend_clustering_mode": "streaming_replication",
                    "listen_addresses": s.listen_addresses,
                    "port": s.port,
                    "socket_dir": s.run_dir,
                    "pcp_listen_addresses": s.pcp_listen_addresses,
                    "pcp_port": s.pcp_port,
                    "pcp_socket_dir": s.run_dir,
                    "pid_file_name": f"{s.run_dir}/pgpool.pid",
                    "logdir": s.log_dir,
                },
            ),
            ("backends (node id = position in the topology)", backends),
            (
                "authentication",
                {
                    "enable_pool_hba": True,
                    "pool_passwd": s.path("pool_passwd"),
                    "allow_clear_text_frontend_auth": False,
                },
            ),
            (
                "pooling",
                {
                    "num_init_children": s.num_init_children,
                    "max_pool": s.max_pool,
                    "connection_cache": True,
                    "child_life_time": 300,
                    "connection_life_time": 0,
                    "client_idle_limit": 0,
                    # Result caching would serve stale rows after writes on another pgpool.
                    "memory_cache_enabled": False,
                },
            ),
            (
                "load balancing: writes to the primary, reads to standbys",
                {
                    "load_balance_mode": True,
                    "database_redirect_preference_list": _redirect_list(s),
                    # After a write, the rest of that transaction reads from the primary.
                    "disable_load_balance_on_write": "transaction",
                    "statement_level_load_balance": False,
                    "delay_threshold": s.delay_threshold_bytes,
                    "prefer_lower_delay_standby": True,
                },
            ),
            (
                "streaming replication check",
                {
                    "sr_check_period": s.sr_check_period_s,
                    "sr_check_user": users.healthcheck,
                    "sr_check_password": "",  # from pool_passwd
                    "sr_check_database": "postgres",
                },
            ),
            (
                f"health check (worst-case detection {s.health.worst_case_detection_s}s)",
                {
                    "health_check_period": s.health.period_s,
                    "health_check_timeout": s.health.timeout_s,
                    "health_check_user": users.healthcheck,
                    "health_check_password": "",  # from pool_passwd
                    "health_check_database": "postgres",
                    "health_check_max_retries": s.health.max_retries,
                    "health_check_retry_delay": s.health.retry_delay_s,
                    "connect_timeout": s.health.timeout_s * 1000,
                },
            ),
            (
                "failover: only health checks decide; scripts act over SQL",
                {
                    "failover_command": _command(s, env, FAILOVER_SH, FAILOVER_ARGS),
                    "follow_primary_command": _command(
                        s, env, FOLLOW_PRIMARY_SH, FOLLOW_PRIMARY_ARGS
                    ),
                    # One failed query or an admin shutdown must not trigger a failover.
                    "failover_on_backend_error": False,
                    "failover_on_backend_shutdown": False,
                    # A returning old primary is never re-attached by itself (split brain);
                    # postgres-start.sh rewinds it into a standby, then an operator attaches.
                    "auto_failback": False,
                    # A second node claiming to be primary is detached, not load-balanced to.
                    "detach_false_primary": True,
                    "search_primary_node_timeout": s.search_primary_node_timeout_s,
                },
            ),
            ("watchdog", _watchdog(s)),
            (
                "logging (stderr)",
                {
                    "log_destination": "stderr",
                    "logging_collector": False,
                    "log_line_prefix": "%m: %a pid %p: ",
                    "log_connections": False,
                },
            ),
        ]
    )


def _watchdog(s: PgpoolSettings) -> dict[str, Setting]:
    if not s.uses_watchdog:
        return {"use_watchdog": False}
    conf: dict[str, Setting] = {
        "use_watchdog": True,
        "wd_ipc_socket_dir": s.run_dir,
        # The Kubernetes Service routes to pgpool: no virtual IP to move around.
        "delegate_IP": "",
        # Exactly one pgpool decides a failover, and only with a majority behind it.
        "failover_when_quorum_exists": True,
        "failover_require_consensus": True,
        "allow_multiple_failover_requests_from_node": False,
        "enable_consensus_with_half_votes": False,
        "wd_lifecheck_method": "heartbeat",
        "wd_interval": 3,
        "wd_heartbeat_keepalive": 2,
        "wd_heartbeat_deadtime": 10,
    }
    for i, n in enumerate(s.watchdog_nodes):
        conf |= {
            f"hostname{i}": n.host,
            f"wd_port{i}": n.wd_port,
            f"pgpool_port{i}": n.port,
            f"heartbeat_hostname{i}": n.host,
            f"heartbeat_port{i}": n.heartbeat_port,
            f"heartbeat_device{i}": "",
        }
    return conf


def pgpool_node_id(index: int) -> str:
    """The ``pgpool_node_id`` file next to pgpool.conf: which watchdog node this pod is."""
    return f"{index}\n"


def pool_hba_conf(client_cidrs: Sequence[str]) -> str:
    """Clients authenticate to pgpool with scram-sha-256 against pool_passwd."""
    for cidr in client_cidrs:
        ip_network(cidr)
    lines = ["# Rendered by components/conf/pgpool.py", "local   all  all  scram-sha-256"]
    lines += [f"host    all  all  {cidr}  scram-sha-256" for cidr in client_cidrs]
    return "\n".join(lines) + "\n"


def pool_passwd(entries: Mapping[str, str]) -> str:
    """pool_passwd (SECRET) in the ``role:TEXTpassword`` form.

    scram-sha-256 to the backends needs the clear password, so pool_passwd must hold it
    either as TEXT or AES-encrypted. AES would only move the secret into a .pgpoolkey file
    stored in the same Kubernetes Secret; TEXT keeps one secret and a pure renderer.
    """
    lines = []
    for role, password in entries.items():
        if len(password.encode()) > 128:  # pgpool's token limit in pool_passwd
            raise ValueError(f"password of {role} is longer than pgpool accepts")
        lines.append(f"{role}:TEXT{escape_colon_field(password, f'password of {role}')}")
    return "\n".join(lines) + "\n"


def pcp_conf(user: str, password: str) -> str:
    """pcp.conf (SECRET): ``user:md5(password)``, what ``pg_md5 <password>`` prints."""
    digest = hashlib.md5(password.encode(), usedforsecurity=False).hexdigest()
    return f"{check_token(user, 'pcp user')}:{digest}\n"


def pcppass(user: str, password: str) -> str:
    """The pcp client password file (SECRET) follow_primary.sh uses to re-attach nodes."""
    return f"*:*:{check_token(user, 'pcp user')}:{escape_colon_field(password, 'pcp password')}\n"


def pgpool_command(settings: PgpoolSettings, binary: str = "pgpool") -> list[str]:
    """Foreground pgpool with the rendered files (container args, or the local runner)."""
    s = settings
    return [
        binary,
        "-n",
        "-f",
        s.path("pgpool.conf"),
        "-F",
        s.path("pcp.conf"),
        "-a",
        s.path("pool_hba.conf"),
    ]


def pgpool_files(
    topology: PgTopology,
    users: PgUsers,
    settings: PgpoolSettings,
    client_cidrs: Sequence[str],
    tuning: PgTuning | None = None,
) -> dict[str, str]:
    """Every non-secret pgpool file by name; ``settings.path(name)`` says where it goes."""
    check_connection_budget(settings, tuning or PgTuning())
    return {
        "pgpool.conf": pgpool_conf(topology, users, settings),
        "pool_hba.conf": pool_hba_conf(client_cidrs),
        FAILOVER_SH: failover_sh(),
        FOLLOW_PRIMARY_SH: follow_primary_sh(),
    }


def pgpool_secret_files(
    users: PgUsers, settings: PgpoolSettings, passwords: Mapping[str, str], pcp_password: str
) -> dict[str, str]:
    """pgpool's Secret: client/check passwords, pcp credentials, superuser for the scripts."""
    return {
        "pool_passwd": pool_passwd({r: passwords[r] for r in (users.app, users.healthcheck)}),
        "pcp.conf": pcp_conf(settings.pcp_user, pcp_password),
        "pcppass": pcppass(settings.pcp_user, pcp_password),
        "pgpass": pgpass({users.superuser: passwords[users.superuser]}),
    }
