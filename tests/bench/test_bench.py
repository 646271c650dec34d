"""The benchmark harness (bench/), without running the benchmark: the runner and gateway
options it relies on, the metrics and report arithmetic, and a 2-second wrk run of the
baseline scenario and of the mix's script (skipped when wrk is not installed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bench import report
from bench.data import Prepared, write_data
from bench.load import wrk
from bench.metrics import Scrape, cache_ratios, db_quantiles, histogram_quantile, parse
from bench.run import main, mix_weights
from bench.target import LUA, free_port
from services.kit.metrics import Metrics
from stacks.gateway import SERVER_MAXCONN, local_config
from stacks.local.__main__ import _config, _parser
from stacks.local.platform import PlatformConfig
from stacks.local.process import LocalPlatformError

SERVERS = {
    "user": [("127.0.0.1", 10001)],
    "product": [("127.0.0.1", 10002), ("127.0.0.1", 10003)],
    "order": [("127.0.0.1", 10004)],
    "inventory": [("127.0.0.1", 10005)],
}


def test_local_gateway_without_rate_limit_and_with_server_maxconn() -> None:
    default = local_config(SERVERS, port=18080, metrics_port=18404)
    assert "track-sc0" in default
    assert f"    default-server inter 2s fall 3 rise 2 maxconn {SERVER_MAXCONN}" in default
    uncapped = local_config(SERVERS, port=18080, metrics_port=18404, server_maxconn=None)
    assert "    default-server inter 2s fall 3 rise 2" in uncapped.splitlines()
    cfg = local_config(SERVERS, port=18080, metrics_port=18404, rate_limit=None, server_maxconn=16)
    assert "track-sc0" not in cfg and "sc_http_req_rate" not in cfg  # streams keep their own cap
    assert "    default-server inter 2s fall 3 rise 2 maxconn 16" in cfg.splitlines()
    if shutil.which("haproxy"):
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-haproxy-{os.getpid()}.cfg"
        path.write_text(cfg)
        try:
            env = {**os.environ, "GATEWAY_JWT_KEY": "k" * 64}
            check = subprocess.run(
                ["haproxy", "-c", "-f", str(path)], env=env, capture_output=True, text=True
            )
            assert check.returncode == 0, check.stdout + check.stderr
        finally:
            path.unlink()


def test_runner_options_for_benchmarks() -> None:
    args = _parser().parse_args(
        [
            "up",
            "--rate-limit",
            "0",
            "--server-maxconn",
            "32",
            "--service-env",
            "payment:VELOCITY_LIMIT=1000",
            "--service-env",
            "payment:max_amount_cents=5",
        ]
    )
    config = _config(args)
    assert config.rate_limit is None
    assert config.server_maxconn == 32
    assert config.service_env == {"payment": {"VELOCITY_LIMIT": "1000", "MAX_AMOUNT_CENTS": "5"}}
    assert _config(_parser().parse_args(["up"])).rate_limit is not None
    assert _config(_parser().parse_args(["up"])).server_maxconn == SERVER_MAXCONN
    assert _config(_parser().parse_args(["up", "--server-maxconn", "0"])).server_maxconn is None
    with pytest.raises(SystemExit):
        _parser().parse_args(["up", "--service-env", "payment-no-colon"])
    with pytest.raises(LocalPlatformError, match="unknown services: nope"):
        PlatformConfig(service_env={"nope": {"A": "1"}})


def test_metrics_deltas_cache_ratios_and_db_quantiles() -> None:
    m = Metrics("product", process=False)
    before = Scrape(parse(m.exposition().decode()))
    for _ in range(9):
        m.cache_requests.labels("product", "l1", "hit").inc()
    m.cache_requests.labels("product", "l1", "miss").inc()
    m.cache_requests.labels("product", "l2", "miss").inc()
    for seconds in [0.0004] * 90 + [0.003] * 10:
        m.db_query_seconds.labels("product", "read").observe(seconds)
    after = Scrape(parse(m.exposition().decode()))
    delta = after.minus(before)
    cache = cache_ratios(delta)
    assert cache["l1"]["ratio"] == pytest.approx(0.9)
    assert cache["l2"] == {"miss": 1.0, "lookups": 1.0, "ratio": 0.0}
    db = db_quantiles(delta)["read"]
    assert db["count"] == 100
    assert 0.0 < db["p50"] <= 0.0005  # in the first bucket
    assert 0.0025 <= db["p95"] <= 0.005  # in the (2.5 ms, 5 ms] bucket
    assert histogram_quantile(0.5, {}) is None


def test_report_from_wrk_lines(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    summary = {
        "type": "summary",
        "duration_us": 2_000_000,
        "requests": 300,
        "bytes": 1,
        "connect": 0,
        "read": 0,
        "write": 0,
        "status": 10,
        "timeout": 1,
        "p50_us": 1000,
        "p95_us": 2000,
        "p99_us": 3000,
        "max_us": 4000,
        "mean_us": 1100.0,
    }
    ms = 142  # 1.05**142 us ~ 1.0 ms
    rows = [
        {"type": "second", "t": 100, "kind": "a", "n": 100, "err": 0, "buckets": {ms: 100}},
        {
            "type": "second",
            "t": 101,
            "kind": "a",
            "n": 150,
            "err": 5,
            "buckets": {ms: 150},
            "codes": {"200": 145, "504": 5},
        },
        {
            "type": "second",
            "t": 101,
            "kind": "b",
            "n": 50,
            "err": 5,
            "buckets": {ms + 47: 50},
            "codes": {"412": 5, "200": 45},
        },
        {"type": "second", "t": 101, "kind": "filler", "n": 7, "err": 0, "buckets": {ms: 7}},
    ]
    path.write_text("\n".join(json.dumps(r) for r in [summary, *rows]) + "\n")
    r = report.load_wrk(path)
    assert r["requests"] == 300 and r["rps"] == 150
    assert r["errors"] == 11 and r["socket_errors"] == 1
    assert [s["rps"] for s in r["series"]] == [100, 207]
    assert r["kinds"]["a"]["p50_ms"] == pytest.approx(1.0, rel=0.05)
    assert r["kinds"]["b"]["p95_ms"] == pytest.approx(10.0, rel=0.05)
    assert r["kinds"]["b"]["codes"] == {"200": 45, "412": 5}
    assert "filler" not in r["kinds"]
    # As a flash sale: kind "a" were the attempts, answered within seconds 100-101 of a
    # longer wrk run; 260 attempts were sent, 10 never answered (errors, with "a"'s 5).
    pace = report.flash_pace({**r, "kinds": {"purchase": r["kinds"]["a"]}}, attempts=260)
    assert pace["window_s"] == 0  # no "purchase" seconds under that name
    r["series_by_kind"]["purchase"] = r["series_by_kind"]["a"]
    pace = report.flash_pace({**r, "kinds": {"purchase": r["kinds"]["a"]}}, attempts=260)
    assert (pace["answered"], pace["window_s"], pace["rps"]) == (250, 2, 125)
    assert (pace["unanswered"], pace["errors"]) == (10, 15)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_a_short_real_baseline_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bench.load.OUT", tmp_path)
    port = free_port()
    app = subprocess.Popen([sys.executable, "-m", "bench.baseline", "--port", str(port)])
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/json", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        data = tmp_path / "data.lua"
        data.write_text("return {threads=1}\n")
        r = wrk("baseline", "baseline.lua", url, duration=2, connections=20, threads=1, data=data)
    finally:
        app.terminate()
        app.wait(timeout=10)
    assert r["requests"] > 100 and r["errors"] == 0
    assert sum(s["rps"] for s in r["series"]) <= r["summary"]["requests"]
    assert r["kinds"]["baseline"]["p50_ms"] > 0
    assert (LUA / "mix.lua").exists()
    report.write(
        {
            "machine": {
                "cpu": "x",
                "cores": "2",
                "memory": "1",
                "os": "o",
                "kernel": "k",
                "python": "3",
                "aiohttp": "3",
                "postgresql": "15",
                "pgpool": "4",
                "haproxy": "2",
                "redis": "7",
                "memcached": "1",
                "wrk": "4",
            },
            "args": {"connections": "20"},
            "scenarios": {"baseline": r},
        },
        tmp_path,
    )
    assert "| baseline | 20 |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "latency.png").stat().st_size > 1000


def test_the_mix_weights_are_per_mille_and_costs_weigh_by_them() -> None:
    weights = mix_weights()
    assert sum(weights.values()) == 1000
    assert {"detail", "cart", "order", "register"} <= set(weights)
    kinds = {
        k: {"cpu_ms": 1.0, "rps": 100.0, "errors": 0, "cpu_ms_by_process": {}} for k in weights
    }
    kinds["order"] = {
        "cpu_ms": 21.0,
        "rps": 50.0,
        "errors": 0,
        "cpu_ms_by_process": {"pg-0": 9.0, "pg-1": 3.0, "order-0": 4.0},
    }
    costs = {
        "weights": weights,
        "kinds": kinds,
        "connections": 64,
        "duration_s": 8,
        "idle_cores": 0.05,
    }
    # Every kind 1 ms but orders 21 ms: 1 + 20 x the orders' share.
    expected = 1.0 + 20.0 * weights["order"] / 1000
    assert report.mix_cost(costs) == pytest.approx(expected)
    lines = "\n".join(report._costs(costs, cores=2, mix={"rps": 500.0}))
    assert f"**{expected:.2f} ms**" in lines
    assert f"**{2000 / expected:,.0f} req/s**" in lines
    assert "postgresql 12.00, order-0 4.00" in lines  # the members summed, largest first
    del kinds["register"]  # a kind of the mix not measured: no weighted figure
    assert report.mix_cost(costs) is None
    with pytest.raises(SystemExit) as refused:  # before anything starts
        main(["--scenarios", "costs", "--cost-kinds", "order,ordr"])
    assert refused.value.code == 2


ECHO_APP = """
import sys
from aiohttp import web

async def echo(request):
    rid = request.headers.get("X-Request-ID", "-")
    return web.json_response({}, headers={"X-Request-ID": rid})

app = web.Application()
app.router.add_route("*", "/{tail:.*}", echo)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_the_mix_script_runs_one_kind_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bench.load.OUT", tmp_path)
    port = free_port()
    app = subprocess.Popen([sys.executable, "-c", ECHO_APP, str(port)])
    data = tmp_path / "data.lua"
    prepared = Prepared(
        nonce="t",
        tokens=["user-token"],
        admin_token="admin-token",
        ids=[1, 2, 3],
        skus=["SKU-1", "SKU-2"],
        inventory=[("SKU-9", 1)],
        categories=["laptops"],
        terms=["lamp"],
        flash_sku="SKU-0",
    )
    write_data(data, prepared, threads=1, attempts=10)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        run = {"duration": 1, "connections": 8, "threads": 1, "data": data}
        alone = wrk("cart", "mix.lua", url, script_env={"BENCH_KIND": "cart"}, **run)
        mixed = wrk("mix", "mix.lua", url, **run)
        with pytest.raises(RuntimeError):
            wrk("nothing", "mix.lua", url, script_env={"BENCH_KIND": "no-such-kind"}, **run)
    finally:
        app.terminate()
        app.wait(timeout=10)
    assert set(alone["kinds"]) == {"cart"} and alone["requests"] > 10
    assert {"detail", "list", "cart"} <= set(mixed["kinds"])
