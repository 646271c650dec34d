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
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import logins, report
from bench.data import Prepared, prepare, stock_versions, write_data
from bench.load import cpu_seconds, wrk
from bench.metrics import Scrape, cache_ratios, db_quantiles, pool_wait_quantiles, scrape
from bench.target import (
    FLASH_STOCK,
    LUA,
    OUT,
    PASSWORD,
    Target,
    bring_up,
    ensure_wrk,
    free_port,
    machine,
    say,
    take_down,
)
from services.kit.db import PRIMARY_HINT
from services.order.orders import ACTIVE
from services.user.app import UserSettings
from stacks.gateway import SERVER_MAXCONN
from stacks.local.state import DEFAULT_STATE_DIR, ROOT

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
        prepared.inventory = asyncio.run(stock_versions(target, [s for s, _ in prepared.inventory]))
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
        prepared.inventory = asyncio.run(stock_versions(target, [s for s, _ in prepared.inventory]))
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
