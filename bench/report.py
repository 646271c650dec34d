"""What wrk's Lua scripts wrote, turned into figures, ``report.md`` and ``latency.png``.

Each ``<scenario>.jsonl`` holds wrk's summary line and, per thread, per second and request
kind, the answers, the errors (status >= 400) and a histogram of latencies in log buckets 5 %
wide (bucket b holds latencies in [1.05^b, 1.05^(b+1)) microseconds; bench/lua/common.lua).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

STEP = 1.05
TARGETS = {
    "mix_rps": 2000,
    "mix_p95_ms": 250,
    "mix_error_rate": 0.001,
    "hot_ratio": 0.5,
    "db_read_p95_ms": 5,
    "db_write_p95_ms": 20,
    "flash_rps": 2000,
}


def bucket_us(bucket: int) -> float:
    """A bucket's middle (geometric), in microseconds."""
    return STEP ** (bucket + 0.5)


def quantile(buckets: Mapping[int, int], q: float) -> float | None:
    total = sum(buckets.values())
    if not total:
        return None
    rank, seen = q * total, 0
    for b in sorted(buckets):
        seen += buckets[b]
        if seen >= rank:
            return bucket_us(b)
    return bucket_us(max(buckets))


def load_wrk(path: Path) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    seconds: dict[int, dict[str, Any]] = defaultdict(
        lambda: {"n": 0, "err": 0, "buckets": defaultdict(int), "codes": defaultdict(int)}
    )
    kinds: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"n": 0, "err": 0, "buckets": defaultdict(int), "codes": defaultdict(int)}
    )
    by_kind: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row["type"] == "summary":
            summary = row
            continue
        by_kind[row["kind"]][row["t"]] += row["n"]
        for agg in (seconds[row["t"]], kinds[row["kind"]]):
            agg["n"] += row["n"]
            agg["err"] += row["err"]
            for b, c in row["buckets"].items():
                agg["buckets"][int(b)] += c
            for code, c in row.get("codes", {}).items():
                agg["codes"][code] += c
    figures = _figures(summary, seconds, kinds)
    figures["series_by_kind"] = {
        kind: [{"t": t, "n": n} for t, n in sorted(per_second.items())]
        for kind, per_second in by_kind.items()
    }
    return figures


def _figures(
    summary: Mapping[str, Any],
    seconds: Mapping[int, Mapping[str, Any]],
    kinds: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    duration = summary["duration_us"] / 1e6
    e = summary
    socket_errors = e["connect"] + e["read"] + e["write"] + e["timeout"]
    # Answers counted by the scripts (fillers excluded); wrk's count includes them.
    counted = sum(k["n"] for name, k in kinds.items() if name != "filler")
    errors = sum(k["err"] for name, k in kinds.items() if name != "filler") + socket_errors
    requests = counted if counted else summary["requests"]
    series = []
    for t in sorted(seconds):
        s = seconds[t]
        series.append(
            {
                "t": t,
                "rps": s["n"],
                "errors": s["err"],
                **{f"p{q}_ms": quantile(s["buckets"], q / 100) / 1000 for q in (50, 95, 99)},
            }
        )
    # The first and last seconds are partial (connections opening, threads stopping).
    per_kind = {
        name: {
            "n": k["n"],
            "share": k["n"] / counted if counted else 0.0,
            "errors": k["err"],
            "codes": dict(sorted(k["codes"].items())),
            **{f"p{q}_ms": (quantile(k["buckets"], q / 100) or 0) / 1000 for q in (50, 95, 99)},
        }
        for name, k in sorted(kinds.items())
        if name != "filler"
    }
    return {
        "summary": dict(summary),
        "duration_s": duration,
        "requests": requests,
        "rps": requests / duration if duration else 0.0,
        "errors": errors,
        "socket_errors": socket_errors,
        "error_rate": errors / max(1, requests + socket_errors),
        "series": series,
        "kinds": per_kind,
    }


def flash_pace(result: dict[str, Any], attempts: int) -> dict[str, Any]:
    """The flash sale's figures over the attempts only: wrk's run also holds the idle tail
    (threads wait for their last answers, connections then only send fillers), so the pace
    is the attempts answered over the seconds from the first answer to the last (whole
    seconds, so slightly under the truth). An attempt never answered counts as an error."""
    seconds = [s for s in result["series_by_kind"].get("purchase", []) if s["n"]]
    answered = sum(s["n"] for s in seconds)
    window = seconds[-1]["t"] - seconds[0]["t"] + 1 if seconds else 0
    unanswered = max(0, attempts - answered)
    errors = result["kinds"].get("purchase", {}).get("errors", 0) + unanswered
    return {
        "attempts": attempts,
        "answered": answered,
        "unanswered": unanswered,
        "window_s": window,
        "rps": answered / window if window else 0.0,
        "errors": errors,
        "error_rate": errors / attempts if attempts else 0.0,
    }


# --- the report ---------------------------------------------------------------------------


def _ms(us: float) -> str:
    return f"{us / 1000:.1f}"


def _fmt(v: float | None, unit: str = "ms") -> str:
    return "n/a" if v is None else f"{v * 1000:.2f} {unit}"


def _ok(good: bool) -> str:
    return "met" if good else "**missed**"


def write(results: Mapping[str, Any], out: Path) -> None:
    sc = results["scenarios"]
    lines = ["# Benchmark report", ""]
    m = results["machine"]
    lines += [
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; memory {m['memory']}",
        f"- {m['os']}, kernel {m['kernel']}",
        f"- Python {m['python']}, aiohttp {m['aiohttp']}, PostgreSQL {m['postgresql']}, "
        f"PgPool-II {m['pgpool']}, HAProxy {m['haproxy']}, Redis {m['redis']}, "
        f"Memcached {m['memcached']}, wrk {m['wrk']}",
        "- The load generator (wrk, 2 threads) runs on the same 2 cores as everything it measures.",
        f"- Load average (1 min) when the run began: {m.get('load average at start', '?')}; "
        "after each scenario: "
        + ", ".join(f"{n} {r.get('loadavg_after', '?')}" for n, r in sc.items())
        + " (other work on the machine, e.g. other test runs, shows here).",
        "",
    ]
    if results.get("platform"):
        procs = results["platform"]["processes"]
        lines += [f"Service processes: {', '.join(sorted(procs))}.", ""]
    lines += [
        "## Results",
        "",
        "| scenario | connections | duration | requests | req/s | vs. baseline | p50 | p95 | p99 "
        "| errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = sc.get("baseline", {}).get("rps")
    conns = results["args"].get("connections", "?")
    for name in ("baseline", "hot", "mix", "flash"):
        r = sc.get(name)
        if not r:
            continue
        s = r["summary"]
        ratio = f"{r['rps'] / base:.2f}" if base else "n/a"
        duration, requests = r["duration_s"], r["requests"]
        p50, p95, p99 = (_ms(s[f"p{q}_us"]) for q in (50, 95, 99))
        if "window_s" in r:  # the flash sale: its attempts only (flash_pace)
            duration, requests = r["window_s"], r["answered"]
            k = r["kinds"].get("purchase", {})
            p50, p95, p99 = (f"{k.get(f'p{q}_ms', 0):.1f}" for q in (50, 95, 99))
        lines.append(
            f"| {name} | {conns} | {duration:.1f} s | {requests:,} | "
            f"{r['rps']:,.0f} | {ratio} | {p50} ms | {p95} ms | "
            f"{p99} ms | {r['errors']:,} ({r['error_rate'] * 100:.3f} %) |"
        )
    lines += [
        "",
        "Latency percentiles are wrk's (every request); errors are answers with status >= 400 "
        "plus wrk's socket errors and timeouts (10 s). The flash sale's row counts its "
        "purchase attempts only, from the first answer to the last (its percentiles from the "
        "script's 5 % buckets).",
        "",
    ]
    lines += _targets(sc, base, int(results["args"].get("connections", 1000)))
    for name in ("mix", "hot", "flash"):
        r = sc.get(name)
        if r and r.get("metrics"):
            lines += _metrics_section(name, r)
    if sc.get("mix"):
        lines += _kinds(sc["mix"])
    if sc.get("flash"):
        lines += _flash(sc["flash"])
    lines += _cpu(sc)
    if results.get("logins"):
        lines += _logins(results["logins"])
    if results.get("costs"):
        lines += _costs(results["costs"], int(m["cores"]), sc.get("mix"))
    lines += ["![latency percentiles over time](latency.png)", ""]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    chart(sc, out / "latency.png")


def _targets(sc: Mapping[str, Any], base: float | None, connections: int) -> list[str]:
    rows = []
    mix, hot, flash = sc.get("mix"), sc.get("hot"), sc.get("flash")
    if mix:
        p95 = mix["summary"]["p95_us"] / 1000
        rows.append(
            f"| mix throughput | >= 2,000 req/s | {mix['rps']:,.0f} | {_ok(mix['rps'] >= 2000)} |"
        )
        rows.append(f"| mix p95 | <= 250 ms | {p95:.1f} ms | {_ok(p95 <= 250)} |")
        rows.append(
            f"| mix errors | <= 0.1 % | {mix['error_rate'] * 100:.3f} % | "
            f"{_ok(mix['error_rate'] <= 0.001)} |"
        )
        db = mix.get("metrics", {}).get("db", {})
        for kind, limit in (("read", 5), ("write", 20)):
            p = db.get(kind, {}).get("p95")
            rows.append(
                f"| DB {kind} p95 under the mix | <= {limit} ms | {_fmt(p)} | "
                f"{_ok(p is not None and p * 1000 <= limit)} |"
            )
    if hot and base:
        ratio = hot["rps"] / base
        rows.append(f"| hot path vs. baseline | >= 0.5 | {ratio:.2f} | {_ok(ratio >= 0.5)} |")
    if flash:
        o = flash["outcome"]
        rows.append(f"| flash sale sold | exactly 100 | {o['sold']} | {_ok(o['sold'] == 100)} |")
        rows.append(f"| flash sale oversold | 0 | {o['oversold']} | {_ok(o['oversold'] == 0)} |")
        rows.append(
            f"| flash sale attempts/s | >= 2,000 | {flash['rps']:,.0f} | "
            f"{_ok(flash['rps'] >= 2000)} |"
        )
    if not rows:
        return []
    lines = ["## Targets", "", "| target | wanted | measured | |", "|---|---|---|---|", *rows, ""]
    if mix and mix["rps"]:
        # Little's law for a closed loop: every connection waits for its answer, then asks again.
        lines += [
            f"wrk keeps {connections:,} requests in flight, so the mix's mean latency is "
            f"{connections:,} / throughput = {connections / mix['rps'] * 1000:,.0f} ms at "
            f"{mix['rps']:,.0f} req/s (Little's law): a p95 of 250 ms at {connections:,} "
            f"connections needs more than {connections / 0.25:,.0f} req/s.",
            "",
        ]
    return lines


def _metrics_section(name: str, r: Mapping[str, Any]) -> list[str]:
    lines = [f"### {name}: caches and database (from the services' /metrics)", ""]
    cache = r["metrics"]["cache"]
    layers = [k for k in cache if "/" not in k]
    if layers:
        lines += ["| cache layer | lookups | hits | hit ratio |", "|---|---|---|---|"]
        for layer in layers:
            c = cache[layer]
            lines.append(
                f"| {layer} | {c['lookups']:,.0f} | {c.get('hit', 0):,.0f} | "
                f"{c['ratio'] * 100:.1f} % |"
            )
        lines.append("")
        lines.append(
            "L1 is in-process, L2 Redis, L3 Memcached; a lookup reaches L2 only after an L1 miss, "
            "L3 only after an L2 miss."
        )
        lines.append("")
    db = r["metrics"]["db"]
    if db:
        lines += _quantile_table(("database", "statements"), db)
        lines += [
            "",
            "The time a statement (read) or a whole transaction (write: its commit waits for "
            "a synchronous standby) held its pooled connection; the wait for the connection "
            "is below. Percentiles interpolated within the histogram's buckets (0.5, 1, 2.5, "
            "5, 10, 25 ms, ...).",
            "",
        ]
    waits = r["metrics"].get("pool_wait", {})
    if waits:
        lines += [*_quantile_table(("pool", "waits"), waits), ""]
    return lines


def _quantile_table(header: tuple[str, str], rows: Mapping[str, Any]) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} | p50 | p95 | p99 |", "|---|---|---|---|---|"]
    for key, d in rows.items():
        lines.append(
            f"| {key} | {d['count']:,.0f} | {_fmt(d['p50'])} | {_fmt(d['p95'])} | "
            f"{_fmt(d['p99'])} |"
        )
    return lines


def _kinds(r: Mapping[str, Any]) -> list[str]:
    lines = [
        "### mix: by request kind",
        "",
        "| kind | share | requests | errors | statuses | p50 | p95 | p99 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, k in r["kinds"].items():
        codes = ", ".join(f"{c}: {n:,}" for c, n in k.get("codes", {}).items())
        lines.append(
            f"| {name} | {k['share'] * 100:.1f} % | {k['n']:,} | {k['errors']:,} | {codes} | "
            f"{k['p50_ms']:.1f} ms | {k['p95_ms']:.1f} ms | {k['p99_ms']:.1f} ms |"
        )
    lines += ["", "Per-kind percentiles from the scripts' 5 % log buckets.", ""]
    return lines


def _flash(r: Mapping[str, Any]) -> list[str]:
    o = r["outcome"]
    return [
        "### flash sale",
        "",
        f"- {r['attempts']:,} purchase attempts (POST /api/orders, one unit of {o['sku']}, "
        f"each with its own Idempotency-Key) on {100} units: {r['answered']:,} answered "
        f"within {r['window_s']} s (first answer to last), {r['rps']:,.0f} attempts/s; "
        f"{r['unanswered']:,} never answered (counted as errors).",
        f"- Orders once the saga settled ({o['settled_after_s']} s after the last attempt was "
        f"sent; still in progress: {o['still_active']}): {o['statuses']}.",
        f"- Sold (shipped or confirmed): **{o['sold']}**; committed reservations: "
        f"{o['committed_units']} units; stock left {o['available']} (reserved "
        f"{o['reserved']}); lowest stock level in the audit trail: "
        f"{o['lowest_available_after']}; **oversold: {o['oversold']}**.",
        f"- Answers to the attempts by status: {r['kinds'].get('purchase', {}).get('codes', {})}"
        " (409 is `sold_out`, the order service's answer once the stock feed says nothing is "
        "left, counted as a success; any other 409 would count as an error).",
        f"- Audit (stock rebuilt from its events): {o['audit']}.",
        f"- Before the sale the checkout saga's backlog from the mix drained "
        f"({r.get('saga_backlog_before', {})}): the sale starts on a quiet platform.",
        "- The payment service's fraud velocity limit (5 payments per user per hour) is raised "
        "for the benchmark: a few dozen bench users place every order.",
        "",
    ]


def _cpu(sc: Mapping[str, Any]) -> list[str]:
    lines = ["### Where the CPU went (cores busy, averaged over each run)", ""]
    names = [n for n in ("hot", "mix", "flash") if sc.get(n, {}).get("cpu")]
    if not names:
        return []
    groups = sorted({_group(p) for n in names for p in sc[n]["cpu"]})
    lines += ["| process | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for g in groups:
        vals = []
        for n in names:
            vals.append(sum(v for p, v in sc[n]["cpu"].items() if _group(p) == g))
        if max(vals) < 0.005:
            continue
        lines.append(f"| {g} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    lines += [
        "",
        "postgresql, redis and memcached: all their members together. wrk itself takes the "
        "rest of the 2 cores.",
        "",
    ]
    return lines


def _logins(r: Mapping[str, Any]) -> list[str]:
    raw, storm = r["bcrypt"], r["gateway"]
    statuses = ", ".join(f"{n} x {code}" for code, n in storm["statuses"].items())
    return [
        "## Logins (bcrypt)",
        "",
        f"- bcrypt at cost {raw['rounds']}, one thread of this machine: "
        f"**{_count(raw['per_core_per_s'])} password checks per second per core**; "
        "no login rate can pass it.",
        f"- {storm['concurrency']} clients logging in through the gateway for "
        f"{storm['duration_s']} s: **{storm['logins_per_s']:.1f} logins/s**, "
        f"{_count(storm['logins_per_cpu_s'])} per CPU-second of the user service; "
        f"p50 {_fmt_ms(storm['p50_ms'])}, p99 {_fmt_ms(storm['p99_ms'])}; answers: {statuses}. "
        f"A 503 is the hashing bound refusing at once (median {_fmt_ms(storm['refused_p50_ms'])}, "
        "Retry-After: 1), not a timeout.",
        "",
    ]


def _count(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def mix_cost(costs: Mapping[str, Any]) -> float | None:
    """The CPU (ms) one request of the mix costs the platform: each kind's cost alone,
    weighted by its share of the mix. None when a kind of the mix was not measured."""
    weights, kinds = costs["weights"], costs["kinds"]
    if any(kinds.get(k, {}).get("cpu_ms") is None for k in weights):
        return None
    return sum(w * kinds[k]["cpu_ms"] for k, w in weights.items()) / sum(weights.values())


def _costs(costs: Mapping[str, Any], cores: int, mix: Mapping[str, Any] | None) -> list[str]:
    weights, kinds = costs["weights"], costs["kinds"]
    total_weight = sum(weights.values())
    lines = [
        "### What one request costs (CPU of the whole platform, each kind alone)",
        "",
        f"Each kind of the mix alone for {costs['duration_s']:.0f} s; the CPU of every "
        "platform process until the checkout saga settled what it placed, less the platform's "
        f'idle CPU ({costs["idle_cores"]:.2f} core), over the requests answered. "most of '
        'it" is the three largest parts, in ms. An estimate: alone, a kind batches less than '
        "in the mix (commits, event batches), and runs on this VM vary by 20-30 %.",
        "",
        "| kind | share of the mix | connections | req/s alone | errors | CPU per request "
        "| most of it | share of the mix's CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    weighted = mix_cost(costs)
    for kind, k in sorted(kinds.items(), key=lambda kv: -(kv[1]["cpu_ms"] or 0)):
        share = weights.get(kind, 0) / total_weight
        grouped: dict[str, float] = defaultdict(float)
        for process, ms in k["cpu_ms_by_process"].items():
            grouped[_group(process)] += ms
        top = sorted(grouped.items(), key=lambda kv: -kv[1])[:3]
        of_mix = (
            f"{share * k['cpu_ms'] / weighted * 100:.0f} %" if weighted and k["cpu_ms"] else "n/a"
        )
        lines.append(
            f"| {kind} | {share * 100:.1f} % | {k.get('connections', costs['connections'])} | "
            f"{k['rps']:,.0f} | {k['errors']:,} | {_fmt_ms(k['cpu_ms'])} | "
            + ", ".join(f"{name} {ms:.2f}" for name, ms in top)
            + f" | {of_mix} |"
        )
    lines.append("")
    if weighted:
        ceiling = cores * 1000 / weighted
        measured = f"; the mix measured {mix['rps']:,.0f} req/s" if mix else ""
        lines += [
            f"Weighted by the mix's shares, one request of the mix costs **{weighted:.2f} ms** "
            f"of CPU: {cores} cores allow at most **{ceiling:,.0f} req/s** of this mix even "
            f"with the load generator elsewhere{measured}. 2,000 req/s needs "
            f"{cores * 1000 / 2000:.2f} ms per request or less.",
            "",
        ]
    return lines


def _fmt_ms(ms: float | None) -> str:
    return "n/a" if ms is None else f"{ms:.2f} ms"


def _group(process: str) -> str:
    """A process's row: the data tier's members summed per component."""
    members = {"pg-": "postgresql", "redis": "redis", "memcached": "memcached"}
    return next((name for prefix, name in members.items() if process.startswith(prefix)), process)


def chart(sc: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("baseline", "hot", "mix", "flash") if sc.get(n)]
    if not names:
        return
    fig, axes = plt.subplots(len(names), 1, figsize=(10, 3.2 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        series = sc[name]["series"]
        t0 = series[0]["t"] if series else 0
        xs = [s["t"] - t0 for s in series]
        for q, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            ax.plot(xs, [s[f"{q}_ms"] for s in series], style, label=q)
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{name}: {sc[name]['rps']:,.0f} req/s")
        ax.grid(True, which="both", alpha=0.3)
        ax2 = ax.twinx()
        ax2.bar(xs, [s["rps"] for s in series], alpha=0.15, color="gray", label="req/s")
        ax2.set_ylabel("answers per second")
        ax.legend(loc="upper left")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


__all__ = ["load_wrk", "quantile", "write"]
