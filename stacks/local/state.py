"""The local platform's state directory: where it lives, what runs (``platform.json``), and
``make down`` / ``make status``, which work from any process."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stacks.local.apps import http_status, tcp_open
from stacks.local.backups import BackupTool
from stacks.local.data_tier import MANIFEST
from stacks.local.ports import is_taken
from stacks.local.postgres import pool_nodes
from stacks.local.process import (
    LocalPlatformError,
    pid_alive,
    recorded_processes,
    server_user,
    stop_recorded,
)

ROOT = Path(__file__).resolve().parents[2]


def reachable_state_dir(preferred: Path) -> Path:
    """``preferred`` (in the checkout), unless PostgreSQL's OS user could not reach it: as
    root, a checkout under root's home (mode 0700 on Debian) is closed to ``postgres``. Then a
    directory of this checkout's own under /var/tmp, rather than loosening anyone's home."""
    try:
        user = server_user("postgres")
    except LocalPlatformError:  # not installed yet: `make up` installs it, then decides
        return preferred
    parents = [p for p in preferred.parents if p.exists()]
    if user.is_current or all(user.can_search(p) for p in parents):
        return preferred
    tag = hashlib.sha256(str(preferred).encode()).hexdigest()[:12]
    return Path("/var/tmp") / f"shop-platform-{preferred.name.lstrip('.')}-{tag}"


DEFAULT_STATE_DIR = reachable_state_dir(ROOT / ".local")
STATE_FILE = "platform.json"
RUNNER_LOG = "runner.log"
TIER_DIR = "tier"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def start_ticks(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2 :].split()[19])


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file written by ``write_json``, or None while it does not exist."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_state(state_dir: Path) -> dict[str, Any] | None:
    return read_json(state_dir / STATE_FILE)


def runner_alive(state: Mapping[str, Any] | None) -> int | None:
    """The runner's PID if the process that wrote ``state`` still runs."""
    runner = (state or {}).get("runner")
    if runner and pid_alive(runner["pid"], runner.get("start_ticks")):
        return int(runner["pid"])
    return None


# --- state directory checks -----------------------------------------------------------------


def prepare_state_dir(state_dir: Path, say: Callable[[str], None] = print) -> None:
    """Before an `up`: refuse a running platform or a foreign directory; clear a stale one.

    A state directory whose runner and processes are all gone (a crash, a reboot, a `kill
    -9`) holds nothing a new run could reuse (passwords and data are per run): it is
    removed, and the message says so."""
    state_dir = state_dir.absolute()
    if not state_dir.exists():
        return
    if not state_dir.is_dir():
        raise LocalPlatformError(f"{state_dir} is not a directory: remove it or pass --state-dir")
    state = read_state(state_dir)
    if (pid := runner_alive(state)) is not None:
        raise LocalPlatformError(
            f"the platform is already running from {state_dir} (runner pid {pid}, gateway "
            f"{(state or {}).get('gateway')}): `make status` shows it, `make down` stops it"
        )
    leftovers = recorded_processes(state_dir / TIER_DIR / MANIFEST)
    if leftovers:
        names = ", ".join(f"{p.name} (pid {p.pid})" for p in leftovers[:6])
        more = f" and {len(leftovers) - 6} more" if len(leftovers) > 6 else ""
        raise LocalPlatformError(
            f"processes of an earlier run from {state_dir} are still running without their "
            f"runner: {names}{more}; `make down` stops them"
        )
    entries = {p.name for p in state_dir.iterdir()}
    if not entries:
        return
    ours = {STATE_FILE, RUNNER_LOG, TIER_DIR, "gateway", f"{Path(STATE_FILE).stem}.tmp"}
    if not entries <= ours:
        foreign = ", ".join(sorted(entries - ours)[:5])
        raise LocalPlatformError(
            f"{state_dir} holds files the local platform did not write ({foreign}): "
            "remove it or pass another --state-dir"
        )
    what = (state or {}).get("state", "unknown")
    shutil.rmtree(state_dir)
    say(f"removed {state_dir}: the state of an earlier run ({what}) that no longer runs")


# --- down and status (from any process) -----------------------------------------------------


def stop_platform(state_dir: Path, timeout: float = 90.0) -> tuple[bool, list[str]]:
    """Stop the runner (it stops everything in order), then anything it left behind.

    Returns (something was running, ports still taken)."""
    state_dir = state_dir.absolute()
    state = read_state(state_dir)
    was_running = False
    pid = runner_alive(state)
    if pid is not None:
        was_running = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        runner = (state or {})["runner"]
        deadline = time.monotonic() + timeout
        while pid_alive(pid, runner.get("start_ticks")) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid, runner.get("start_ticks")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    leftovers = stop_recorded(state_dir / TIER_DIR / MANIFEST)
    was_running = was_running or bool(leftovers)
    ports = (state or {}).get("ports", {})
    taken = [
        f"{port} ({what})"
        for what, port in ports.items()
        if "pcp" not in what and is_taken(int(port))
    ]
    if state is not None and state.get("state") not in ("failed",):
        write_json(state_dir / STATE_FILE, {**state, "state": "stopped", "runner": None})
    return was_running, taken


@dataclass(frozen=True)
class Row:
    component: str
    address: str
    pid: str
    state: str


def probe(state: Mapping[str, Any], state_dir: Path) -> list[Row]:
    """Each component's live state: processes from the manifest, probes of their protocol."""
    running = {p.name: p.pid for p in recorded_processes(Path(state["manifest"]))}
    components = state["components"]
    nodes: dict[str, str] = {}
    pgpool = next((c for c in components if c["kind"] == "pgpool"), None)
    if pgpool is not None and "pgpool" in running:
        with contextlib.suppress(LocalPlatformError, OSError, KeyError, ValueError):
            for n in pool_nodes(pgpool["address"], Path(state["pgpass"])):
                sync = f", {n.replication_sync_state}" if n.replication_sync_state else ""
                label = n.role if n.status != "down" else f"{n.role}, detached"
                nodes[n.address] = f"{label}{sync}" if n.role == "standby" else label
    redis_password = ""
    with contextlib.suppress(OSError, KeyError):
        redis_password = Path(state["redis_password_file"]).read_text().strip()

    def one(c: Mapping[str, Any]) -> Row:
        name, kind, address = c["name"], c["kind"], c["address"]
        pid = running.get(name)
        if kind in ("workers", "job"):
            if kind == "job":
                last = state.get("partitions", {})
                detail = last.get("last_result", "not run yet")
                when = last.get("last_run", "")
                return Row(name, address, "", f"last run {when}: {detail}" if when else detail)
            order_pids = [str(running[n]) for n in running if n.startswith("order-")]
            return Row(name, address, ",".join(order_pids), "running" if order_pids else "down")
        if pid is None:
            return Row(name, address, "", "down")
        if kind == "postgres":
            up = tcp_open(address)
            return Row(name, address, str(pid), (nodes.get(address) or "up") if up else "starting")
        if kind == "redis":
            return Row(name, address, str(pid), _redis_role(address, redis_password))
        if kind in ("pgpool", "memcached", "store"):
            ok = tcp_open(address) and (kind != "pgpool" or bool(nodes))
            return Row(name, address, str(pid), "up" if ok else "not answering")
        status = http_status(c["url"])
        return Row(
            name,
            address,
            str(pid),
            "ready" if status == 200 else f"not ready ({status or 'no answer'})",
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, components))


def _redis_role(address: str, password: str) -> str:
    from redis import Redis
    from redis.exceptions import RedisError

    host, port = address.rsplit(":", 1)
    client = Redis(host=host, port=int(port), password=password or None, socket_timeout=1)
    try:
        role = client.execute_command("ROLE")[0]
        role = role.decode() if isinstance(role, bytes) else str(role)
        return {"slave": "replica"}.get(role, role)
    except RedisError:
        return "not answering"
    finally:
        client.close()


def format_table(rows: Sequence[Row]) -> str:
    headers = Row("COMPONENT", "ADDRESS", "PID", "STATE")
    all_rows = [headers, *rows]
    widths = [max(len(getattr(r, f)) for r in all_rows) for f in ("component", "address", "pid")]
    lines = [
        f"{r.component:<{widths[0]}}  {r.address:<{widths[1]}}  {r.pid:>{widths[2]}}  {r.state}"
        for r in all_rows
    ]
    return "\n".join(lines)


def backup_lines(state: Mapping[str, Any]) -> list[str]:
    """The last backups and the recovery window, as pgBackRest reports them now."""
    entry = state.get("backups")
    if not entry:
        return ["backups:  none (--backup-interval 0)"]
    try:
        window = BackupTool.from_state(state).window()
    except LocalPlatformError as error:
        return [f"backups:  cannot be listed now ({error})"]
    every = entry["schedule"]["every_s"]
    lines = [f"backups:  {len(window.backups)} in {entry['store']}, one every {every:.0f} s"]
    for backup in window.backups[-3:]:
        lines.append(
            f"  {backup.label:<34} {backup.type:<4} {backup.finished:%Y-%m-%d %H:%M:%S}Z  "
            f"{backup.stored_bytes / 1e6:8.1f} MB stored"
        )
    if window.earliest is None:
        lines.append("  none yet: the first is taken once the platform is ready (`make backup`)")
    else:
        lines.append(f"  recovery window: {window.earliest:%Y-%m-%d %H:%M:%S}Z .. now")
    if error := entry["schedule"].get("last_error"):
        lines.append(f"  the last scheduled backup failed: {error}")
    return lines


def summary(state: Mapping[str, Any], state_dir: Path) -> str:
    """The status table, the gateway URL and two requests to try."""
    url = state["gateway"]
    lines = [format_table(probe(state, state_dir)), ""]
    ready = state.get("timings", {}).get("total")
    lines.append(f"gateway:  {url}" + (f"   (ready in {ready} s)" if ready else ""))
    lines.append(f"metrics:  {state['gateway_metrics']}   logs: {state['logs']}")
    for sink in (c for c in state["components"] if c["kind"] == "sink"):
        lines.append(f"mail:     {sink['url']}   (what the services sent, e.g. reset e-mails)")
    if "prometheus" in state:
        lines.append(f"prometheus: {state['prometheus']}   alertmanager: {state['alertmanager']}")
        lines.append(f"alerts:   {state['alert_sink']}/notifications   (what Alertmanager sent)")
    lines += backup_lines(state)
    lines += [
        "try:",
        f"  curl -s '{url}/api/products?category=laptops&page_size=3'",
        f"  curl -s '{url}/api/products/search?q=waterprof+camra'   # typos still match",
    ]
    if not state.get("demo_users"):
        lines.append("no demo data (--no-demo-data): the catalog is empty")
    else:
        lines.append(
            f"demo users: {', '.join(state['demo_users'])} (password {state['demo_password']})"
        )
    return "\n".join(lines)
