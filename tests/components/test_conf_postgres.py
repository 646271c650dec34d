"""The PostgreSQL / PgPool-II renderers: settings, secrets hygiene and the script contracts."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from components.conf.pgpool import (
    HealthCheck,
    PgpoolNode,
    PgpoolSettings,
    check_connection_budget,
    pcp_conf,
    pcppass,
    pgpool_command,
    pgpool_conf,
    pgpool_files,
    pgpool_secret_files,
    pool_hba_conf,
    pool_passwd,
)
from components.conf.postgres import (
    PgMember,
    PgTopology,
    PgTuning,
    PgUsers,
    WalArchive,
    pg_hba_conf,
    pgpass,
    postgresql_conf,
    smallest_quorum,
    synchronous_standby_names,
)
from components.conf.scripts import (
    FAILOVER_SH,
    FOLLOW_PRIMARY_SH,
    POSTGRES_START_SH,
    failover_env,
    failover_sh,
    follow_primary_sh,
    postgres_env,
    postgres_files,
    postgres_secret_files,
    postgres_start_sh,
    quorums_value,
)

USERS = PgUsers()
PASSWORDS = {
    "postgres": "Su:per'\\secret-1",
    "replicator": "Repl:secret-2",
    "shop": "Shop'secret-3",
    "pgpool_check": "Check\\secret-4",
}
PCP_PASSWORD = "Pcp:secret-5"
GKE_CIDRS = ("10.0.0.0/14",)


def gke_topology(**overrides: object) -> PgTopology:
    members = tuple(
        PgMember(f"pg-{i}", f"pg-{i}-0.postgres.data.svc.cluster.local", zone=f"zone-{i % 3}")
        for i in range(4)
    )
    return PgTopology(members=members, **overrides)  # type: ignore[arg-type]


def local_topology() -> PgTopology:
    root = "/tmp/platform"
    return PgTopology(
        members=tuple(
            PgMember(f"pg-{i}", "127.0.0.1", 55432 + i, data_dir=f"{root}/pg-{i}") for i in range(3)
        ),
        bin_dir="/usr/lib/postgresql/15/bin",
        conf_dir=f"{root}/conf",
        socket_dir=f"{root}/run",
        listen_addresses="127.0.0.1",
    )


def settings_of(conf: str) -> dict[str, str]:
    """``name = value`` lines of a postgresql.conf / pgpool.conf, quotes removed."""
    out: dict[str, str] = {}
    for line in conf.splitlines():
        m = re.fullmatch(r"(\w+) = (?:'((?:[^']|'')*)'|(\S+))", line)
        if m:
            assert m.group(1) not in out, f"{m.group(1)} set twice"
            out[m.group(1)] = m.group(3) if m.group(2) is None else m.group(2).replace("''", "'")
    return out


# --- postgresql.conf / pg_hba.conf ---------------------------------------------------------


def test_postgresql_conf_replication_settings() -> None:
    s = settings_of(postgresql_conf(gke_topology()))
    # Per member (zone-aware), from postgres-start.sh: never one list for every member.
    assert "synchronous_standby_names" not in s
    assert s["synchronous_commit"] == "on"
    assert s["wal_level"] == "replica"
    assert s["wal_log_hints"] == "on"
    assert s["hot_standby"] == "on"
    assert s["hot_standby_feedback"] == "on"
    assert s["recovery_target_timeline"] == "latest"
    assert s["listen_addresses"] == "*"
    assert s["unix_socket_directories"] == "/var/run/postgresql"
    assert s["hba_file"] == "/etc/postgresql/conf/pg_hba.conf"
    assert s["password_encryption"] == "scram-sha-256"
    assert s["archive_mode"] == "off"
    # The port is per member (postgres -p): a shared file must not pin one.
    assert "port" not in s


def test_postgresql_conf_tuning_and_archiving() -> None:
    prod = settings_of(postgresql_conf(gke_topology()))
    tiny = settings_of(postgresql_conf(local_topology(), PgTuning.tiny()))
    assert prod["shared_buffers"] == "8GB" and tiny["shared_buffers"] == "32MB"
    assert int(prod["max_connections"]) > int(tiny["max_connections"])
    archived = settings_of(
        postgresql_conf(
            gke_topology(),
            archive=WalArchive("wal-g wal-push %p", restore_command="wal-g wal-fetch %f %p"),
        )
    )
    assert archived["archive_mode"] == "on"
    assert archived["archive_command"] == "wal-g wal-push %p"
    assert archived["restore_command"] == "wal-g wal-fetch %f %p"


def test_a_commit_waits_for_a_standby_in_another_zone() -> None:
    """Four members in three zones: pg-3 shares pg-0's zone, so neither acknowledges the
    other's commits; the others wait for any standby outside their own zone."""
    topology = gke_topology()
    zones = {m.name: m.zone for m in topology.members}
    assert zones == {"pg-0": "zone-0", "pg-1": "zone-1", "pg-2": "zone-2", "pg-3": "zone-0"}
    quorum = {m.name: [q.name for q in topology.quorum(m)] for m in topology.members}
    assert quorum == {
        "pg-0": ["pg-1", "pg-2"],
        "pg-1": ["pg-0", "pg-2", "pg-3"],
        "pg-2": ["pg-0", "pg-1", "pg-3"],
        "pg-3": ["pg-1", "pg-2"],
    }
    for member in topology.members:
        assert all(q.zone != member.zone for q in topology.quorum(member))
    assert synchronous_standby_names(topology, topology.member("pg-0")) == 'ANY 1 ("pg-1", "pg-2")'
    assert synchronous_standby_names(topology, topology.member("pg-3")) == 'ANY 1 ("pg-1", "pg-2")'
    # Each member's own value reaches its server on the command line, and pgpool's failover
    # script gets every member's quorum.
    for member in topology.members:
        env = postgres_env(topology, PgUsers(), member, "/pgpass")
        assert env["PG_SYNCHRONOUS_STANDBY_NAMES"] == synchronous_standby_names(topology, member)
    assert quorums_value(topology) == (
        "pg-0:1:pg-1/pg-2,pg-1:1:pg-0/pg-2/pg-3,pg-2:1:pg-0/pg-1/pg-3,pg-3:1:pg-1/pg-2"
    )


def test_where_every_member_shares_one_zone_every_other_member_counts() -> None:
    """A single-zone stack (dev) cannot survive its zone; its quorum guards against a node."""
    members = tuple(PgMember(f"pg-{i}", f"pg-{i}", zone="zone-0") for i in range(2))
    topology = PgTopology(members=members)
    assert [q.name for q in topology.quorum(members[0])] == ["pg-1"]
    assert smallest_quorum(2, ["zone-0"]) == 1
    assert smallest_quorum(4, ["a", "b", "c"]) == 2  # pg-0 and pg-3: the two other zones
    assert smallest_quorum(3, ["a", "b"]) == 1  # pg-0 and pg-2 in a: only pg-1 outside


def test_synchronous_standbys_are_bounded_by_the_smallest_quorum() -> None:
    asynchronous = gke_topology(synchronous_standbys=0)
    assert synchronous_standby_names(asynchronous, asynchronous.members[0]) == ""
    both = gke_topology(synchronous_standbys=2)
    assert synchronous_standby_names(both, both.members[0]) == 'ANY 2 ("pg-1", "pg-2")'
    with pytest.raises(ValueError, match="pg-0 has only 2 standbys outside its zone"):
        gke_topology(synchronous_standbys=3)


def test_extra_settings_cannot_override_rendered_ones() -> None:
    conf = postgresql_conf(gke_topology(extra={"shared_preload_libraries": "pg_stat_statements"}))
    assert settings_of(conf)["shared_preload_libraries"] == "pg_stat_statements"
    with pytest.raises(ValueError, match="twice"):
        postgresql_conf(gke_topology(extra={"synchronous_commit": "off"}))


def test_topology_validation() -> None:
    with pytest.raises(ValueError, match="duplicate member names"):
        PgTopology(members=(PgMember("pg-0", "a"), PgMember("pg-0", "b")))
    with pytest.raises(ValueError, match="duplicate member addresses"):
        PgTopology(members=(PgMember("pg-0", "a"), PgMember("pg-1", "a")))
    with pytest.raises(ValueError):
        PgMember("pg 0", "a")
    with pytest.raises(ValueError):
        PgMember("pg-0", "a b")
    with pytest.raises(ValueError):
        PgUsers(app="postgres")


def test_pg_hba_scram_everywhere_and_replication_only_for_replicator() -> None:
    hba = pg_hba_conf(USERS, GKE_CIDRS, replication_cidrs=("10.4.0.0/16",))
    rows = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    assert all(row[-1] == "scram-sha-256" for row in rows)
    replication = [row for row in rows if row[1] == "replication"]
    assert replication == [["host", "replication", "replicator", "10.4.0.0/16", "scram-sha-256"]]
    assert ["host", "all", "all", "10.0.0.0/14", "scram-sha-256"] in rows
    with pytest.raises(ValueError):
        pg_hba_conf(USERS, ("10.0.0.300/8",))


# --- pgpool.conf ---------------------------------------------------------------------------


def test_pgpool_backends_follow_the_topology() -> None:
    topo = gke_topology()
    s = settings_of(pgpool_conf(topo, USERS, PgpoolSettings()))
    for i, m in enumerate(topo.members):
        assert s[f"backend_hostname{i}"] == m.host
        assert s[f"backend_port{i}"] == "5432"
        assert s[f"backend_weight{i}"] == "1"
        assert s[f"backend_application_name{i}"] == m.name
        assert s[f"backend_flag{i}"] == "ALLOW_TO_FAILOVER"
    assert "backend_hostname4" not in s
    assert s["backend_clustering_mode"] == "streaming_replication"


def test_pgpool_routing_failover_and_4_3_names() -> None:
    s = settings_of(pgpool_conf(gke_topology(), USERS, PgpoolSettings()))
    assert s["load_balance_mode"] == "on"
    assert s["database_redirect_preference_list"] == ".*:standby(1.0)"
    assert s["num_init_children"] == "50" and s["max_pool"] == "4"
    assert s["failover_on_backend_error"] == "off"
    assert s["auto_failback"] == "off"
    assert s["connection_cache"] == "on"
    assert s["socket_dir"] == "/var/run/pgpool"
    assert "unix_socket_directories" not in s  # pgpool 4.3 would reject it
    assert s["pcp_socket_dir"] == "/var/run/pgpool"
    assert s["health_check_user"] == s["sr_check_user"] == "pgpool_check"
    assert s["failover_command"].endswith(f"sh /etc/pgpool2/scripts/{FAILOVER_SH} %d %h %p %P %m")
    assert s["follow_primary_command"].endswith(
        f"sh /etc/pgpool2/scripts/{FOLLOW_PRIMARY_SH} %d %h %p %m %H %r"
    )
    assert "PG_MEMBERS=pg-0=pg-0-0.postgres.data.svc.cluster.local:5432," in s["failover_command"]
    half = settings_of(pgpool_conf(gke_topology(), USERS, PgpoolSettings(primary_read_share=0.25)))
    assert half["database_redirect_preference_list"] == ".*:standby(0.75)"
    only = settings_of(pgpool_conf(gke_topology(), USERS, PgpoolSettings(primary_read_share=1)))
    assert only["database_redirect_preference_list"] == ".*:primary"


def test_dead_primary_is_detected_within_30_seconds() -> None:
    assert PgpoolSettings().health.worst_case_detection_s < 30
    assert HealthCheck(period_s=10, timeout_s=10, max_retries=3).worst_case_detection_s > 30


def test_watchdog_only_with_three_or_more_pgpools() -> None:
    topo = gke_topology()
    assert settings_of(pgpool_conf(topo, USERS, PgpoolSettings()))["use_watchdog"] == "off"
    nodes = tuple(PgpoolNode(f"pgpool-{i}.pgpool.data.svc.cluster.local") for i in range(3))
    s = settings_of(pgpool_conf(topo, USERS, PgpoolSettings(watchdog_nodes=nodes)))
    assert s["use_watchdog"] == "on"
    assert s["failover_when_quorum_exists"] == "on"
    assert s["failover_require_consensus"] == "on"
    for i, n in enumerate(nodes):
        assert s[f"hostname{i}"] == s[f"heartbeat_hostname{i}"] == n.host
        assert s[f"wd_port{i}"] == "9000" and s[f"heartbeat_port{i}"] == "9694"
    for count in (1, 2):
        with pytest.raises(ValueError, match="at least 3"):
            PgpoolSettings(watchdog_nodes=nodes[:count])


def test_connection_budget() -> None:
    check_connection_budget(PgpoolSettings(), PgTuning())
    nodes = tuple(PgpoolNode(f"pgpool-{i}") for i in range(3))
    check_connection_budget(PgpoolSettings(watchdog_nodes=nodes), PgTuning())
    with pytest.raises(ValueError, match="max_connections"):
        check_connection_budget(PgpoolSettings(), PgTuning.tiny())


def test_pgpool_command_uses_rendered_paths() -> None:
    assert pgpool_command(PgpoolSettings()) == [
        "pgpool",
        "-n",
        "-f",
        "/etc/pgpool2/pgpool.conf",
        "-F",
        "/etc/pgpool2/secrets/pcp.conf",
        "-a",
        "/etc/pgpool2/pool_hba.conf",
    ]


# --- secrets -------------------------------------------------------------------------------


def test_secret_file_formats() -> None:
    assert pcp_conf("pcp_admin", "secret") == "pcp_admin:5ebe2294ecd0e0f08eab7690d2a6ee69\n"
    assert pcppass("pcp_admin", "a:b") == "*:*:pcp_admin:a\\:b\n"
    assert pool_passwd({"shop": "x:y\\z"}) == "shop:TEXTx\\:y\\\\z\n"
    assert pgpass({"shop": "x:y"}) == "*:*:*:shop:x\\:y\n"
    with pytest.raises(ValueError):
        pgpass({"shop": "two\nlines"})
    with pytest.raises(ValueError):
        pool_passwd({"shop": "x" * 129})


def test_no_password_in_any_non_secret_file() -> None:
    nodes = tuple(PgpoolNode(f"pgpool-{i}") for i in range(3))
    settings = PgpoolSettings(watchdog_nodes=nodes)
    topo = gke_topology()
    public = postgres_files(topo, USERS, GKE_CIDRS, archive=WalArchive("wal-g wal-push %p"))
    public |= pgpool_files(topo, USERS, settings, GKE_CIDRS)
    for password in (*PASSWORDS.values(), PCP_PASSWORD):
        for name, text in public.items():
            assert password not in text, f"a password leaked into {name}"
    # ...and the secret files do carry them (escaped), each only what its reader needs.
    members_secret = postgres_secret_files(USERS, PASSWORDS)
    assert "Repl\\:secret-2" in members_secret["pgpass"]
    pgpool_secret = pgpool_secret_files(USERS, settings, PASSWORDS, PCP_PASSWORD)
    assert "Shop'secret-3" in pgpool_secret["pool_passwd"]
    assert "replicator" not in pgpool_secret["pool_passwd"]  # nobody replicates via pgpool
    assert pgpool_secret["pgpass"].startswith("*:*:*:postgres:")  # the scripts' superuser
    assert pgpool_secret["pgpass"].count("\n") == 1
    for name in pgpool_secret:
        assert settings.path(name).startswith(settings.secrets_dir + "/")
    for name in pgpool_files(topo, USERS, settings, GKE_CIDRS):
        assert not settings.path(name).startswith(settings.secrets_dir + "/")


def test_pool_hba() -> None:
    rows = [r.split() for r in pool_hba_conf(GKE_CIDRS).splitlines() if not r.startswith("#")]
    assert rows == [
        ["local", "all", "all", "scram-sha-256"],
        ["host", "all", "all", "10.0.0.0/14", "scram-sha-256"],
    ]


# --- scripts -------------------------------------------------------------------------------

SCRIPTS = {
    FAILOVER_SH: failover_sh(),
    FOLLOW_PRIMARY_SH: follow_primary_sh(),
    POSTGRES_START_SH: postgres_start_sh(),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_scripts_parse_as_posix_sh(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(SCRIPTS[name])
    for shell in ("sh", "dash"):
        if shutil.which(shell):
            subprocess.run([shell, "-n", str(path)], check=True)
    text = SCRIPTS[name]
    assert text.startswith("#!/bin/sh\n") and "\nset -eu\n" in text


def _variables(script: str) -> set[str]:
    return set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", script))


def test_scripts_read_exactly_the_environment_the_renderers_give() -> None:
    topo = local_topology()
    start_env = postgres_env(topo, USERS, topo.members[1], "/secrets/pgpass")
    assert start_env["PG_MEMBERS"] == (
        "pg-0=127.0.0.1:55432,pg-1=127.0.0.1:55433,pg-2=127.0.0.1:55434"
    )
    assert start_env["PGDATA"] == "/tmp/platform/pg-1"
    optional = {"PG_WAIT_PRIMARY_S", "FOLLOW_TIMEOUT_S", "PGCONNECT_TIMEOUT", "PROG"}
    assert _variables(postgres_start_sh()) - optional == set(start_env)
    pool_env = failover_env(topo, USERS, "/s/pgpass", "/run/pgpool", 9898, "pcp", "/s/pcppass")
    used = _variables(failover_sh()) | _variables(follow_primary_sh())
    assert used - optional - {"PGPOOL_BINDIR"} == set(pool_env)


def test_same_script_text_for_every_environment() -> None:
    gke = postgres_files(gke_topology(), USERS, GKE_CIDRS)
    local = postgres_files(local_topology(), USERS, ("127.0.0.1/32",), PgTuning.tiny())
    assert gke[POSTGRES_START_SH] == local[POSTGRES_START_SH]
    assert gke["postgresql.conf"] != local["postgresql.conf"]


def _shell_function(script: str, name: str) -> str:
    m = re.search(rf"^{name}\(\) \{{.*?^\}}$", script, re.S | re.M)
    assert m, name
    return m.group(0)


@pytest.mark.skipif(not shutil.which("sh"), reason="needs a POSIX shell")
def test_start_script_reads_passwords_back_from_rendered_pgpass(tmp_path: Path) -> None:
    """postgres-start.sh parses the pgpass this module writes: the escaping must round-trip."""
    passfile = tmp_path / "pgpass"
    passfile.write_text(pgpass(PASSWORDS))
    program = _shell_function(postgres_start_sh(), "password_of") + '\npassword_of "$1"'
    for role, password in PASSWORDS.items():
        out = subprocess.run(
            ["sh", "-c", program, "sh", role],
            env={"PGPASSFILE": str(passfile), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out == password + "\n"


@pytest.mark.skipif(not shutil.which("sh"), reason="needs a POSIX shell")
def test_scripts_parse_the_member_list() -> None:
    program = _shell_function(postgres_start_sh(), "members") + "\nmembers"
    env = postgres_env(gke_topology(), USERS, gke_topology().members[0], "/p")
    out = subprocess.run(
        ["sh", "-c", program],
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines()[3] == "pg-3 pg-3-0.postgres.data.svc.cluster.local 5432"
