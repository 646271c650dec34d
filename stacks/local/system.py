"""The Debian packages the local platform runs, checked and (as root) installed.

``python3 -m stacks.local.system`` (what ``make system-packages`` runs, before ``make test``):
every program present: prints one line; something missing and root: ``apt-get install``s the
missing packages; not root: fails with the one command to run. Standard library only: it runs
before the virtual environment exists.

Installing postgresql, redis-server or memcached may start Debian's own services on 5432,
6379 and 11211. The local platform neither uses nor stops them: it runs its own processes on
its own ports.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from stacks.local.process import LocalPlatformError

PG_BIN_DIR = "/usr/lib/postgresql/15/bin"
PGPOOL_BIN_DIR = "/usr/sbin"
PGPOOL = f"{PGPOOL_BIN_DIR}/pgpool"
REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"
MEMCACHED = "/usr/bin/memcached"
HAPROXY = "/usr/sbin/haproxy"
PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
POSTGRES_EXPORTER = "/usr/bin/prometheus-postgres-exporter"
REDIS_EXPORTER = "/usr/bin/prometheus-redis-exporter"
PGBACKREST = "/usr/bin/pgbackrest"


@dataclass(frozen=True)
class Program:
    path: str
    package: str


PROGRAMS: tuple[Program, ...] = (
    Program(f"{PG_BIN_DIR}/postgres", "postgresql-15"),
    Program(f"{PG_BIN_DIR}/initdb", "postgresql-15"),
    Program(f"{PG_BIN_DIR}/pg_basebackup", "postgresql-client-15"),
    Program(f"{PG_BIN_DIR}/psql", "postgresql-client-15"),
    Program(PGPOOL, "pgpool2"),
    Program(f"{PGPOOL_BIN_DIR}/pcp_attach_node", "pgpool2"),  # follow_primary.sh
    Program(REDIS_SERVER, "redis-server"),
    Program(REDIS_CLI, "redis-tools"),
    Program(MEMCACHED, "memcached"),
    Program(HAPROXY, "haproxy"),
    # The monitoring stack (stacks.local.monitoring), with promtool and amtool.
    Program(PROMETHEUS, "prometheus"),
    Program(ALERTMANAGER, "prometheus-alertmanager"),
    Program(POSTGRES_EXPORTER, "prometheus-postgres-exporter"),
    Program(REDIS_EXPORTER, "prometheus-redis-exporter"),
    # WAL archiving and backups (stacks.local.backups), as the GKE image carries it.
    Program(PGBACKREST, "pgbackrest"),
)
# Installed with the rest by `make system-packages` (make test, make bench), never needed to
# start the platform: the benchmarks' load generator, and the tools that check and unit-test
# the monitoring files (tests/stacks/test_alerts.py).
TOOLS: tuple[Program, ...] = (
    Program("/usr/bin/wrk", "wrk"),
    Program("/usr/bin/promtool", "prometheus"),
    Program("/usr/bin/amtool", "prometheus-alertmanager"),
)
_APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


def missing_packages(programs: tuple[Program, ...] = PROGRAMS) -> list[str]:
    """Packages whose programs are missing, in a stable order, without duplicates."""
    missing = [p.package for p in programs if not os.access(p.path, os.X_OK)]
    return list(dict.fromkeys(missing))


def _apt_candidate(package: str) -> bool:
    """Whether apt can install ``package`` itself (not a purely virtual name)."""
    out = subprocess.run(
        ["apt-cache", "policy", package], capture_output=True, text=True, check=False
    ).stdout
    candidates = [
        line.split(":", 1)[1].strip() for line in out.splitlines() if "Candidate:" in line
    ]
    return bool(candidates) and candidates[0] != "(none)"


def packages_to_install(missing: list[str]) -> list[str]:
    packages = list(missing)
    if "postgresql-15" in packages:
        # Debian 12 folds contrib into postgresql-15 (postgresql-contrib-15 is virtual there).
        contrib = "postgresql-contrib-15"
        packages.append(contrib if _apt_candidate(contrib) else "postgresql-contrib")
    return packages


def install(packages: list[str]) -> None:
    env = {**os.environ, **_APT_ENV}
    print(f"installing Debian packages: {' '.join(packages)}", flush=True)
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
    ):
        result = subprocess.run(argv, env=env, check=False)
        if result.returncode != 0:
            raise LocalPlatformError(
                f"could not install the Debian packages the local platform needs: "
                f"`{' '.join(argv)}` failed (exit code {result.returncode}, its output is "
                "above); fix apt (network, sources, a held dpkg lock: `apt-get -f install`) "
                f"or install them by hand (`apt-get install {' '.join(packages)}`), then "
                "run the command again"
            )


def ensure_programs(*, install_missing: bool, programs: tuple[Program, ...] = PROGRAMS) -> None:
    """Raise one clear message if a program is missing (after installing it, when allowed)."""
    missing = missing_packages(programs)
    if not missing:
        return
    if install_missing and os.geteuid() == 0:
        install(packages_to_install(missing))
        missing = missing_packages(programs)
        if not missing:
            return
    raise LocalPlatformError(
        "the local platform needs Debian packages that are not installed: run "
        f"`sudo apt-get install {' '.join(packages_to_install(missing))}` "
        "(or `make system-packages` as root)"
    )


def main() -> int:
    try:
        ensure_programs(install_missing=True, programs=PROGRAMS + TOOLS)
    except LocalPlatformError as error:
        print(error, file=sys.stderr)
        return 1
    print(
        f"system packages: all {len(PROGRAMS)} programs of the local platform and "
        f"{len(TOOLS)} tool(s) are present"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
