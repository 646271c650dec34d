"""`make bench`: the seed's traffic against the local platform, on this machine, with wrk.

    python -m bench.run [--duration 60] [--connections 1000] [--use-running [--state-dir DIR]]

Brings the local platform up detached in ``build/bench/platform`` (gateway on a free port,
its per-address rate limit lifted: all the load comes from 127.0.0.1; the payment service's
fraud velocity limit raised, since a few hundred bench users place thousands of orders), or
uses a running one (``--use-running``: started with ``--rate-limit 0``), prepares users,
tokens and SKUs through the public API, then runs, each bounded in time:

1. ``baseline``: ``bench.baseline`` (bare aiohttp JSON endpoint), same connections.
2. ``hot``: product detail of 100 products through the gateway (cache hits after warm-up).
3. ``mix``: the seed's normal mix through the gateway (``bench/lua/mix.lua``), after a
   warm-up run, for ``--duration`` seconds.
4. ``flash``: ``--flash-attempts`` orders of one unit of a SKU stocked with 100, as fast as
   the platform takes them; then waits for the checkout saga to settle every order and checks
   the database: exactly 100 sold, 0 oversold, the stock's audit trail consistent.
5. ``logins``: ``bench.logins``: bcrypt checks per core at the user service's cost, and
   ``--login-concurrency`` shoppers logging in through the gateway for ``--login-duration``
   seconds: logins per second, per CPU-second of the user service, and the hashing bound's
   fast 503s.
6. ``costs``: each kind of the mix's requests alone, briefly, with the CPU every platform
   process spent on it (until the checkout saga settled what it placed): the CPU one request
   of the mix costs, and the throughput the machine's cores allow at that price.

Writes ``build/bench/report.md``, ``build/bench/latency.png`` and ``build/bench/results.json``.

Why wrk and not locust: the load generator shares the 2 cores with the platform, and wrk (C,
epoll) spends a small fraction of what a Python generator would per request; locust with
1,000 users would need more CPU than the services it measures. wrk reports one latency
distribution per run, so the scripts carry the send time in each request's ``X-Request-ID``
(which the gateway returns) and keep per-second histograms per request kind in Lua
(``bench/lua/common.lua``): latency over time without a second tool.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform as pyplatform
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import bcrypt

from bench import logins, report
from bench.metrics import Scrape, cache_ratios, db_quantiles, pool_wait_quantiles, scrape
from components.conf.postgres import PgUsers
from services.kit.db import PRIMARY_HINT
from services.order.orders import ACTIVE
from services.user.app import UserSettings
from stacks.gateway import SERVER_MAXCONN
from stacks.local.platform import DEFAULT_STATE_DIR, ROOT, reachable_state_dir, read_state
from stacks.local.process import LocalPlatformError, recorded_processes
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
    state = read_state(state_dir)
    assert state is not None
    return Target(state_dir, state, started=True)


def take_down(target: Target) -> None:
    if target.started:
        say("stopping the platform the bench started")
        _stacks_local("down", "--state-dir", str(target.state_dir), timeout=180)


# --- preparing data through the public API ---------------------------------------------------


@dataclass
class Prepared:
    nonce: str
    tokens: list[str]
    admin_token: str
    ids: list[int]
    skus: list[str]
    inventory: list[tuple[str, int]]
    categories: list[str]
    terms: list[str]
    flash_sku: str
    emails: list[str] = field(default_factory=list)  # the registered users', admin first
    shopper_tokens: list[str] = field(default_factory=list)
    flash_tokens: list[str] = field(default_factory=list)


async def _json(
    session: aiohttp.ClientSession, method: str, url: str, expect: tuple[int, ...], **kw: Any
) -> Any:
    for attempt in range(5):  # bcrypt on a busy machine can outlast the gateway's timeout
        async with session.request(method, url, **kw) as r:
            body = await r.json(content_type=None)
            if r.status in (502, 503, 504) and attempt < 4:
                await asyncio.sleep(1 + attempt)
                continue
            if r.status not in expect:
                raise RuntimeError(f"{method} {url}: {r.status} {body}")
            return body, r.headers
    raise AssertionError("unreachable")


async def _login(session: aiohttp.ClientSession, gw: str, email: str) -> str:
    body, _ = await _json(
        session,
        "POST",
        f"{gw}/api/users/login",
        (200,),
        json={"email": email, "password": PASSWORD},
    )
    return str(body["access_token"])


async def _users(session: aiohttp.ClientSession, gw: str, emails: list[str]) -> list[str]:
    """Register (bcrypt: ~0.25 s of CPU each) and log in, a few at a time."""
    gate = asyncio.Semaphore(4)

    async def one(email: str) -> str:
        async with gate:
            await _json(
                session,
                "POST",
                f"{gw}/api/users/register",
                (202,),
                json={"email": email, "password": PASSWORD, "full_name": "Bench User"},
            )
            return await _login(session, gw, email)

    return list(await asyncio.gather(*(one(e) for e in emails)))


async def prepare(target: Target, users: int, shopper_count: int) -> Prepared:
    gw = target.gateway
    nonce = uuid.uuid4().hex[:8]
    db = await target.connect()
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        emails = [f"bench-{nonce}-{i}@bench.example.com" for i in range(users)]
        began = time.monotonic()
        tokens = await _users(session, gw, emails)
        say(f"{users} users registered and logged in ({time.monotonic() - began:.1f} s)")
        await db.execute(
            PRIMARY_HINT + "UPDATE users SET role = 'admin' WHERE email = $1", emails[0]
        )
        admin_token = await _login(session, gw, emails[0])
        shoppers = await _shoppers(db, target, nonce, shopper_count)
        cats, _ = await _json(session, "GET", f"{gw}/api/products/categories", (200,))
        categories = [c["slug"] for c in cats if c["products"] > 0 and c["parent"]]
        ids = [r["id"] for r in await db.fetch("SELECT id FROM products WHERE active ORDER BY id")]
        stock = await db.fetch(PRIMARY_HINT + "SELECT sku, version FROM inventory ORDER BY sku")
        names = await db.fetch("SELECT name FROM products ORDER BY id LIMIT 400")
        words = sorted({w.lower() for r in names for w in r["name"].split()[1:3] if len(w) > 3})
        terms = words[:40] + [w[:-1] + w[-1] * 2 for w in words[:10]]  # a few typos
        flash_sku = stock[-1]["sku"]
        inventory = [(r["sku"], int(r["version"])) for r in stock[-1001:-1]]
        skus = [r["sku"] for r in stock[: len(stock) - 1001]]
        # The flash SKU: 100 units, set through the admin API (If-Match on its version).
        _, headers = await _json(session, "GET", f"{gw}/api/inventory/{flash_sku}", (200,))
        await _json(
            session,
            "PUT",
            f"{gw}/api/inventory/{flash_sku}",
            (200,),
            json={"available": FLASH_STOCK},
            headers={"Authorization": f"Bearer {admin_token}", "If-Match": headers["ETag"]},
        )
    await db.close()
    return Prepared(
        nonce=nonce,
        tokens=tokens[1:],
        shopper_tokens=shoppers,
        admin_token=admin_token,
        ids=ids,
        skus=skus,
        inventory=inventory,
        categories=categories,
        terms=terms,
        flash_sku=flash_sku,
        emails=emails,
        flash_tokens=shoppers or tokens[1:],
    )


async def _shoppers(db: asyncpg.Connection, target: Target, nonce: str, count: int) -> list[str]:
    """Many shoppers without ``count`` bcrypt hashes and logins (0.25 s of CPU each): rows
    in ``users`` sharing one hash, and access tokens signed with the platform's key, as login
    issues them. Carts and orders need one user per connection or so: a few dozen users for
    1,000 connections would serialize every cart change on a few rows."""
    if count <= 0:
        return []
    from services.kit.auth import Tokens

    password_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(12)).decode()
    rows = await db.fetch(
        PRIMARY_HINT
        + """INSERT INTO users (email, password_hash, full_name)
           SELECT 'shopper-' || $1 || '-' || g || '@bench.example.com', $2, 'Bench Shopper'
           FROM generate_series(1, $3) AS g RETURNING id""",
        nonce,
        password_hash,
        count,
    )
    tokens = Tokens.from_file(Path(target.state["jwt_secret_file"]))
    return [tokens.issue(str(r["id"]), "customer", f"bench-{nonce}-{r['id']}") for r in rows]


async def _versions(target: Target, skus: list[str]) -> list[tuple[str, int]]:
    db = await target.connect()
    try:
        rows = await db.fetch(
            PRIMARY_HINT + "SELECT sku, version FROM inventory WHERE sku = ANY($1) ORDER BY sku",
            skus,
        )
    finally:
        await db.close()
    return [(r["sku"], int(r["version"])) for r in rows]


def _lua(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid Lua string literal here (ASCII)
    if isinstance(value, list | tuple):
        return "{" + ",".join(_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}={_lua(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def write_data(path: Path, p: Prepared, threads: int, attempts: int) -> None:
    data = {
        "nonce": p.nonce,
        "threads": threads,
        "tokens": p.tokens,
        "shopper_tokens": p.shopper_tokens or p.tokens,
        "admin_token": p.admin_token,
        "products": len(p.ids),
        "ids": p.ids,
        "hot_ids": p.ids[:HOT_PRODUCTS],
        "skus": p.skus,
        "inventory": [list(i) for i in p.inventory],
        "categories": p.categories,
        "terms": p.terms,
        "flash_sku": p.flash_sku,
        "flash_tokens": p.flash_tokens,
        "flash_attempts": attempts,
    }
    path.write_text("return " + _lua(data) + "\n")


# --- running wrk ----------------------------------------------------------------------------


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU time (user + system) each process has used, its descendants included: pgpool and
    postgres work in their children."""
    hz = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for name, pid in pids.items():
        own = _ticks(pid)
        if own is not None:
            seconds[name] = (own + sum(_ticks(c) or 0 for c in _children(pid))) / hz
    return seconds


def _ticks(pid: int) -> int | None:
    try:
        fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields_[11]) + int(fields_[12])  # utime + stime


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    found = []
    for child in map(int, text.split()):
        found += [child, *_children(child)]
    return found


def wrk(
    name: str,
    script: str,
    url: str,
    *,
    duration: float,
    connections: int,
    threads: int,
    data: Path,
    target: Target | None = None,
    stop_when_threads_finish: bool = False,
    script_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run wrk with a bench script. wrk itself always runs for its whole duration, even when
    every thread has stopped; with `stop_when_threads_finish` (the flash sale: a fixed number
    of attempts) it is interrupted, as Ctrl-C would, once each thread has said it is done."""
    out = OUT / f"{name}.jsonl"
    out.unlink(missing_ok=True)
    finished = [out.with_name(f"{out.name}.done-{n}") for n in range(1, threads + 1)]
    for marker in finished:
        marker.unlink(missing_ok=True)
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{int(duration)}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA / script),
        url,
    ]
    env = {
        **os.environ,
        "BENCH_LUA_DIR": str(LUA),
        "BENCH_OUT": str(out),
        "BENCH_DATA": str(data),
        **(script_env or {}),
    }
    pids = target.pids() if target else {}
    before = cpu_seconds(pids)
    began = time.time()
    say(f"{name}: wrk {' '.join(argv[1:6])} {script} for up to {int(duration)} s")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wrk_ticks = 0
    if stop_when_threads_finish:
        while proc.poll() is None and not all(m.exists() for m in finished):
            time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # wrk then reports and runs the scripts' done()
    try:
        stdout, _ = proc.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, _ = proc.communicate()
    ended = time.time()
    for marker in finished:
        marker.unlink(missing_ok=True)
    # wrk's own CPU time (it shares the machine with what it measures)
    with_ticks = os.times()
    wrk_ticks = with_ticks.children_user + with_ticks.children_system
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({proc.returncode}): {stdout.decode()[-2000:]}")
    after = cpu_seconds(pids)
    cpu = {n: (after[n] - before.get(n, 0)) / (ended - began) for n in after}
    result = report.load_wrk(out)
    result["loadavg_after"] = Path("/proc/loadavg").read_text().split(" ")[0]
    result.update(name=name, started=began, ended=ended, cpu=cpu, wrk_cpu_total=wrk_ticks)
    s = result["summary"]
    say(
        f"{name}: {result['rps']:,.0f} req/s, p50 {s['p50_us'] / 1000:.1f} ms, "
        f"p95 {s['p95_us'] / 1000:.1f} ms, p99 {s['p99_us'] / 1000:.1f} ms, "
        f"errors {result['error_rate'] * 100:.3f} %"
    )
    return result


# --- the flash sale's outcome, from the database --------------------------------------------

FLASH_SQL = """
SELECT o.status, count(*) AS n
FROM orders o JOIN order_items i ON i.order_id = o.id AND i.order_created_at = o.created_at
WHERE i.sku = $1 AND o.created_at > $2
GROUP BY o.status
"""


async def saga_drained(target: Target, wait_s: float) -> dict[str, Any]:
    """Wait (at most `wait_s`) until no order is left in the checkout saga."""
    db = await target.connect()
    began = time.monotonic()
    try:
        while True:
            active = await db.fetchval(
                PRIMARY_HINT + "SELECT count(*) FROM orders WHERE status = ANY($1::text[])",
                list(ACTIVE),
            )
            if active == 0 or time.monotonic() - began > wait_s:
                return {"waited_s": round(time.monotonic() - began, 1), "still_active": active}
            await asyncio.sleep(1.0)
    finally:
        await db.close()


async def flash_outcome(target: Target, sku: str, since: float, wait_s: float) -> dict[str, Any]:
    db = await target.connect()
    from datetime import UTC, datetime

    since_dt = datetime.fromtimestamp(since - 5, UTC)
    began = time.monotonic()
    try:
        while True:
            rows = await db.fetch(PRIMARY_HINT + FLASH_SQL, sku, since_dt)
            statuses = {r["status"]: r["n"] for r in rows}
            active = sum(statuses.get(s, 0) for s in ACTIVE)
            if active == 0 or time.monotonic() - began > wait_s:
                break
            await asyncio.sleep(1.0)
        settled_s = time.monotonic() - began
        stock = await db.fetchrow(
            PRIMARY_HINT + "SELECT available, reserved FROM inventory WHERE sku = $1", sku
        )
        events = await db.fetchrow(
            PRIMARY_HINT
            + """SELECT min(available_after) AS lowest, count(*) AS n
               FROM inventory_events WHERE sku = $1""",
            sku,
        )
        committed = await db.fetchval(
            PRIMARY_HINT
            + """SELECT coalesce(sum(quantity), 0) FROM reservations
               WHERE sku = $1 AND status = 'committed'""",
            sku,
        )
    finally:
        await db.close()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{target.gateway}/api/inventory/{sku}/audit") as r,
    ):
        audit = await r.json()
    sold = statuses.get("shipped", 0) + statuses.get("confirmed", 0)
    return {
        "sku": sku,
        "statuses": statuses,
        "still_active": active,
        "settled_after_s": round(settled_s, 1),
        "sold": sold,
        "committed_units": int(committed),
        "available": stock["available"],
        "reserved": stock["reserved"],
        "lowest_available_after": events["lowest"],
        "oversold": max(0, sold - FLASH_STOCK, int(committed) - FLASH_STOCK)
        + (1 if (events["lowest"] or 0) < 0 else 0),
        "audit": audit,
    }


# --- what each kind of request costs --------------------------------------------------------


# Kinds measured with fewer connections: a registration is ~0.3 s of bcrypt, so 64 of them in
# flight would mostly wait out the gateway's queue timeout, and the CPU the unanswered ones
# spent would be charged to the few answered.
COST_CONNECTIONS = {"register": 4}


def mix_weights() -> dict[str, int]:
    """The mix's request kinds and their weights (per 1,000), as bench/lua/mix.lua adds them."""
    found = re.findall(r'^add\("(\w+)", (\d+),', (LUA / "mix.lua").read_text(), re.MULTILINE)
    return {kind: int(weight) for kind, weight in found}


def run_costs(args: argparse.Namespace, target: Target, data: Path) -> dict[str, Any]:
    """The platform's CPU per request for each kind of the mix, run alone.

    Each kind runs by itself (mix.lua with BENCH_KIND) at --cost-connections for
    --cost-duration seconds. Every platform process's CPU is counted from the start until the
    checkout saga has also settled the orders the run placed, less what the platform burns
    idle over that time, and divided by the requests answered. Weighted by the mix's shares,
    it is the CPU one request of the mix costs: the machine's cores over it bound the mix's
    throughput, whatever the tuning (wrk's own CPU comes on top)."""
    say("costs: the platform's idle CPU (5 s)")
    idle_before, idle_began = cpu_seconds(target.pids()), time.monotonic()
    time.sleep(5)
    idle_after, idle_s = cpu_seconds(target.pids()), time.monotonic() - idle_began
    # Cores each process keeps busy with nothing to do (relays, consumers, health checks).
    idle = {n: (idle_after[n] - idle_before.get(n, 0)) / idle_s for n in idle_after}
    weights = mix_weights()
    kinds: dict[str, Any] = {}
    for kind in [k for k in args.cost_kinds.split(",") if k] or weights:
        connections = min(args.cost_connections, COST_CONNECTIONS.get(kind, args.cost_connections))
        before, began = cpu_seconds(target.pids()), time.monotonic()
        r = wrk(
            f"cost-{kind}",
            "mix.lua",
            target.gateway,
            duration=args.cost_duration,
            connections=connections,
            threads=args.threads,
            data=data,
            target=target,
            script_env={"BENCH_KIND": kind},
        )
        drained = asyncio.run(saga_drained(target, wait_s=args.flash_timeout))
        after, elapsed = cpu_seconds(target.pids()), time.monotonic() - began
        answered = r["requests"] - r["errors"]
        spent = {n: max(0.0, after[n] - before.get(n, 0) - idle.get(n, 0) * elapsed) for n in after}
        busy = sum(spent.values())
        kinds[kind] = {
            "connections": connections,
            "requests": r["requests"],
            "errors": r["errors"],
            "rps": r["rps"],
            "p95_ms": r["summary"]["p95_us"] / 1000,
            "settled_s": round(elapsed, 1),
            "saga_wait_s": drained["waited_s"],
            "cpu_ms": 1000 * busy / answered if answered else None,
            "cpu_ms_by_process": {
                n: 1000 * v / answered for n, v in spent.items() if answered and v > 0
            },
        }
        say(
            f"cost-{kind}: {kinds[kind]['cpu_ms'] or 0:.2f} ms of CPU per request "
            f"({answered:,} answered, settled in {elapsed:.1f} s)"
        )
    return {
        "connections": args.cost_connections,
        "duration_s": args.cost_duration,
        "idle_cores": sum(idle.values()),
        "weights": weights,
        "kinds": kinds,
    }


# --- main -----------------------------------------------------------------------------------


def run_baseline(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.baseline", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                subprocess.run(
                    ["curl", "-sf", "-o", "/dev/null", f"{url}/json"], check=True, timeout=2
                )
                break
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                time.sleep(0.2)
        return wrk(
            "baseline",
            "baseline.lua",
            url,
            duration=args.short_duration,
            connections=args.connections,
            threads=args.threads,
            data=data,
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=float, default=60, help="mix: seconds measured")
    parser.add_argument("--warmup", type=float, default=10, help="mix and hot path warm-up")
    parser.add_argument("--short-duration", type=float, default=20, help="baseline, hot path")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--users", type=int, default=64, help="bench shoppers")
    parser.add_argument(
        "--shoppers", type=int, default=2000, help="users with signed tokens (carts, orders)"
    )
    parser.add_argument(
        "--cost-duration", type=float, default=8, help="costs: seconds per kind of request"
    )
    parser.add_argument("--cost-connections", type=int, default=64, help="costs: connections")
    parser.add_argument(
        "--cost-kinds", default="", help="costs: comma-separated kinds (default: all the mix's)"
    )
    parser.add_argument("--login-concurrency", type=int, default=48, help="logins: clients")
    parser.add_argument("--login-duration", type=float, default=15, help="logins: seconds")
    parser.add_argument("--flash-attempts", type=int, default=10_000)
    parser.add_argument("--flash-timeout", type=float, default=120)
    parser.add_argument(
        "--scenarios",
        default="baseline,hot,mix,flash,logins,costs",
        help="comma-separated subset",
    )
    parser.add_argument("--use-running", action="store_true", help="the platform in --state-dir")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--processes", default=None, help="as `make up --processes`")
    parser.add_argument(
        "--server-maxconn",
        type=int,
        default=SERVER_MAXCONN,
        help="gateway: requests in flight per service process (0: no cap)",
    )
    parser.add_argument("--service-env", action="append", default=[], help="SERVICE:VAR=VALUE")
    parser.add_argument("--keep", action="store_true", help="leave the platform running")
    parser.add_argument("--label", default="", help="a note for results.json (what changed)")
    args = parser.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = {k for k in args.cost_kinds.split(",") if k} - set(mix_weights())
    if unknown:
        parser.error(f"--cost-kinds: {', '.join(sorted(unknown))} not in the mix: {mix_weights()}")
    OUT.mkdir(parents=True, exist_ok=True)
    ensure_wrk()
    results: dict[str, Any] = {
        "machine": machine(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "scenarios": {},
    }
    data = OUT / "data.lua"
    data.write_text("return {threads=1}\n")
    if "baseline" in scenarios:
        results["scenarios"]["baseline"] = run_baseline(args, data)
    if set(scenarios) - {"baseline"}:
        target = bring_up(args)
        results["platform"] = {
            "state_dir": str(target.state_dir),
            "processes": {c["name"]: c["address"] for c in target.components("service")},
        }
        try:
            run_platform(args, scenarios, target, data, results)
        finally:
            if not args.keep:
                take_down(target)
    text = json.dumps(results, indent=2, default=str) + "\n"
    (OUT / "results.json").write_text(text)
    if args.label:  # kept side by side for before/after comparisons
        (OUT / f"results-{re.sub(r'[^A-Za-z0-9_.-]+', '-', args.label)}.json").write_text(text)
    report.write(results, OUT)
    say(f"report: {OUT / 'report.md'}, chart: {OUT / 'latency.png'}")
    return 0


def run_platform(
    args: argparse.Namespace,
    scenarios: list[str],
    target: Target,
    data: Path,
    results: dict[str, Any],
) -> None:
    gw = target.gateway
    prepared = asyncio.run(prepare(target, args.users, args.shoppers))
    write_data(data, prepared, args.threads, args.flash_attempts)
    common = {"connections": args.connections, "threads": args.threads, "data": data}
    if "hot" in scenarios:
        wrk("hot-warmup", "hot.lua", gw, duration=3, target=target, **common)
        before = scrape(target.metrics_urls())
        r = wrk("hot", "hot.lua", gw, duration=args.short_duration, target=target, **common)
        r["metrics"] = _metrics(scrape(target.metrics_urls()).minus(before))
        results["scenarios"]["hot"] = r
    if "mix" in scenarios:
        wrk("mix-warmup", "mix.lua", gw, duration=args.warmup, target=target, **common)
        # The warm-up changed stock versions: the measured run starts from the current ones.
        prepared.inventory = asyncio.run(_versions(target, [s for s, _ in prepared.inventory]))
        write_data(data, prepared, args.threads, args.flash_attempts)
        before = scrape(target.metrics_urls())
        r = wrk("mix", "mix.lua", gw, duration=args.duration, target=target, **common)
        r["metrics"] = _metrics(scrape(target.metrics_urls()).minus(before))
        results["scenarios"]["mix"] = r
    if "flash" in scenarios:
        # A scenario of its own: the mix's orders still in their saga would otherwise sit in
        # front of the sale's first reservations in the event streams.
        drained = asyncio.run(saga_drained(target, wait_s=args.flash_timeout))
        say(f"flash: the checkout saga's backlog drained in {drained['waited_s']} s")
        before = scrape(target.metrics_urls())
        began = time.time()
        r = wrk(
            "flash",
            "flash.lua",
            gw,
            duration=args.flash_timeout,
            target=target,
            stop_when_threads_finish=True,
            **common,
        )
        r.update(report.flash_pace(r, args.flash_attempts))
        r["saga_backlog_before"] = drained
        say(
            f"flash: {r['answered']:,} attempts answered in {r['window_s']} s: "
            f"{r['rps']:,.0f} attempts/s, {r['unanswered']:,} never answered"
        )
        say("flash: waiting for the checkout saga to settle every order")
        r["outcome"] = asyncio.run(
            flash_outcome(target, prepared.flash_sku, began, wait_s=args.flash_timeout)
        )
        r["metrics"] = _metrics(scrape(target.metrics_urls()).minus(before))
        o = r["outcome"]
        say(
            f"flash: sold {o['sold']}, oversold {o['oversold']}, available {o['available']}, "
            f"statuses {o['statuses']}, settled in {o['settled_after_s']} s"
        )
        results["scenarios"]["flash"] = r
    if "logins" in scenarios:
        results["logins"] = run_logins(args, target, prepared)
    if "costs" in scenarios:
        # The mix and the sale moved stock versions: the inventory kind sends current ones.
        prepared.inventory = asyncio.run(_versions(target, [s for s, _ in prepared.inventory]))
        write_data(data, prepared, args.threads, args.flash_attempts)
        results["costs"] = run_costs(args, target, data)


def bcrypt_rounds(args: argparse.Namespace) -> int:
    """The user service's bcrypt cost in this run: its default unless --service-env sets it."""
    rounds = int(UserSettings.model_fields["bcrypt_rounds"].default)
    for setting in args.service_env:
        if setting.startswith("user:BCRYPT_ROUNDS="):
            rounds = int(setting.split("=", 1)[1])
    return rounds


def run_logins(args: argparse.Namespace, target: Target, prepared: Prepared) -> dict[str, Any]:
    rounds = bcrypt_rounds(args)
    say(f"logins: bcrypt at cost {rounds} in this process (3 s)")
    raw = logins.bcrypt_rate(rounds)

    def user_cpu() -> float:
        pids = {n: pid for n, pid in target.pids().items() if n.split("-")[0] == "user"}
        return sum(cpu_seconds(pids).values())

    say(f"logins: {args.login_concurrency} clients through the gateway ({args.login_duration} s)")
    storm = asyncio.run(
        logins.login_storm(
            target.gateway,
            prepared.emails[1:],
            PASSWORD,
            concurrency=args.login_concurrency,
            duration_s=args.login_duration,
            cpu_of_user_service=user_cpu,
        )
    )
    say(
        f"logins: {storm['logins_per_s']:.1f}/s, {storm['logins_per_cpu_s'] or 0:.1f} per "
        f"CPU-second of the user service (bcrypt alone: {raw['per_core_per_s']:.1f}/s per core), "
        f"statuses {storm['statuses']}"
    )
    return {"bcrypt": raw, "gateway": storm}


def _metrics(delta: Scrape) -> dict[str, Any]:
    return {
        "cache": cache_ratios(delta),
        "db": db_quantiles(delta),
        "pool_wait": pool_wait_quantiles(delta),
    }


if __name__ == "__main__":
    sys.exit(main())
