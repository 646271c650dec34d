"""The machine the bench runs on and the platform it loads: the local platform brought up
detached for the bench (or a running one), with the bench's shared names."""

from __future__ import annotations

import argparse
import os
import platform as pyplatform
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from components.conf.postgres import PgUsers
from stacks.local.process import LocalPlatformError, recorded_processes
from stacks.local.state import ROOT, reachable_state_dir, read_state
from stacks.local.system import TOOLS, ensure_programs

OUT = ROOT / "build" / "bench"
LUA = ROOT / "bench" / "lua"
BENCH_STATE_DIR = reachable_state_dir(OUT / "platform")
PASSWORD = "bench-password-1"
FLASH_STOCK = 100
HOT_PRODUCTS = 100
# Raised for the benchmark (default 5 an hour per user): a few hundred users place thousands.
VELOCITY_LIMIT = 10_000_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


# --- the machine ---------------------------------------------------------------------------


def _first(path: str, pattern: str) -> str:
    try:
        m = re.search(pattern, Path(path).read_text(), re.M)
    except OSError:
        return "?"
    return m.group(1).strip() if m else "?"


def _version(argv: list[str], pattern: str = r"(\d+\.\d+(\.\d+)?)") -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else "?"


def machine() -> dict[str, str]:
    mem_kb = int(_first("/proc/meminfo", r"^MemTotal:\s+(\d+)") or 0)
    return {
        "cpu": _first("/proc/cpuinfo", r"^model name\s*:\s*(.+)$"),
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": pyplatform.release(),
        "os": _first("/etc/os-release", r'^PRETTY_NAME="?([^"\n]+)'),
        "python": pyplatform.python_version(),
        "aiohttp": aiohttp.__version__,
        "postgresql": _version(["/usr/lib/postgresql/15/bin/postgres", "--version"]),
        "pgpool": _version(["pgpool", "--version"]),
        "haproxy": _version(["haproxy", "-v"]),
        "redis": _version(["redis-server", "--version"], r"v=(\S+)"),
        "memcached": _version(["memcached", "-V"]),
        "wrk": _version(["wrk", "-v"]),
        "load average at start": Path("/proc/loadavg").read_text().split(" ")[0],
    }


def ensure_wrk() -> None:
    """`make bench` installs it with the other Debian packages; a direct run may not have."""
    try:
        ensure_programs(install_missing=True, programs=TOOLS)
    except LocalPlatformError as error:
        raise SystemExit(str(error)) from None


# --- the platform --------------------------------------------------------------------------


@dataclass
class Target:
    state_dir: Path
    state: dict[str, Any]
    started: bool  # by us: taken down at the end

    @property
    def gateway(self) -> str:
        return str(self.state["gateway"])

    def components(self, kind: str) -> list[dict[str, Any]]:
        return [c for c in self.state["components"] if c["kind"] == kind]

    def metrics_urls(self) -> list[str]:
        return [c["url"].replace("/readyz", "/metrics") for c in self.components("service")]

    def pgpool(self) -> tuple[str, int]:
        host, port = self.components("pgpool")[0]["address"].rsplit(":", 1)
        return host, int(port)

    def db_password(self) -> str:
        return (self.state_dir / "tier" / "secrets" / "database-password").read_text().strip()

    async def connect(self) -> asyncpg.Connection:
        """The application's database through PgPool-II, as the services reach it (reads that
        must see the bench's own writes carry PRIMARY_HINT)."""
        host, port = self.pgpool()
        pg = PgUsers()
        return await asyncpg.connect(
            host=host,
            port=port,
            user=pg.app,
            password=self.db_password(),
            database=pg.app_database,
        )

    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in recorded_processes(Path(self.state["manifest"]))}


def _stacks_local(*args: str, timeout: float) -> None:
    subprocess.run(
        [sys.executable, "-m", "stacks.local", *args], cwd=ROOT, check=True, timeout=timeout
    )


def bring_up(args: argparse.Namespace) -> Target:
    if args.use_running:
        state_dir = args.state_dir.absolute()
        state = read_state(state_dir)
        if not state or state.get("state") != "ready":
            raise SystemExit(f"no ready platform in {state_dir}: `make up ARGS=--detach` first")
        cfg = (state_dir / "gateway" / "haproxy.cfg").read_text()
        if "track-sc0" in cfg:
            raise SystemExit(
                "the running gateway rate-limits per address (all bench load comes from "
                "127.0.0.1): start it with `make up ARGS='--detach --rate-limit 0 "
                f"--service-env payment:VELOCITY_LIMIT={VELOCITY_LIMIT}'`, or let the bench "
                "start its own (no --use-running)"
            )
        return Target(state_dir, state, started=False)
    state_dir = BENCH_STATE_DIR
    if read_state(state_dir):
        _stacks_local("down", "--state-dir", str(state_dir), timeout=120)
    argv = [
        "up",
        "--detach",
        "--state-dir",
        str(state_dir),
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--rate-limit",
        "0",
        "--service-env",
        f"payment:VELOCITY_LIMIT={VELOCITY_LIMIT}",
    ]
    if args.processes:
        argv += ["--processes", args.processes]
    argv += ["--server-maxconn", str(args.server_maxconn)]
    for item in args.service_env:
        argv += ["--service-env", item]
    say(f"starting the platform in {state_dir}")
    _stacks_local(*argv, timeout=420)
    # The runner's first backup follows the start: measure after it, as production backs up
    # off-peak, not under the load being measured.
    deadline = time.monotonic() + 300
    while (state := read_state(state_dir)) is not None and state.get("backups"):
        if state["backups"]["schedule"]["taken"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert state is not None
    return Target(state_dir, state, started=True)


def take_down(target: Target) -> None:
    if target.started:
        say("stopping the platform the bench started")
        _stacks_local("down", "--state-dir", str(target.state_dir), timeout=180)
