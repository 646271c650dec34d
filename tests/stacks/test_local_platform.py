"""The whole platform on one machine, as `make up ARGS=--detach` starts it.

One platform for the module (started through the CLI, detached, with the default 10,000 product
catalog), used in order: a shopper's journey through the gateway only, the metrics showing that
reads went to replicas and caches, Prometheus seeing every target and every metric its rules
read, the payment service frozen until its alert pages, revoked tokens, a password reset whose
e-mail lands in the mail sink, the live feed held open for minutes, the running platform
refusing a second `up`, the loss of the primary's zone (the primary and the standby beside it)
while orders are placed, and last `down`, after which no process of the platform may be alive
and no port taken. The quick checks of bad local conditions need no platform.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from components.conf import zone_of
from components.conf.grafana import RATE_INTERVAL
from components.conf.prometheus import PG_IN_RECOVERY
from services.kit.exports import CACHE_REQUESTS
from stacks.alerts import (
    ALERTS,
    CART_ABANDONMENT_RATIO,
    CLUSTER_ONLY_METRICS,
    GATEWAY_RPS,
    INVENTORY_TURNOVER_DAILY,
    PAYMENT_SUCCESS_RATIO,
    RECORDINGS,
    SEARCH_TOP3_RATIO,
    metric_names,
)
from stacks.dashboards import DASHBOARDS
from stacks.local.ports import ZONES, is_taken
from stacks.local.postgres import PoolNode, pool_nodes, psql
from stacks.local.process import LocalPlatformError, pid_alive, recorded_processes
from stacks.local.state import ROOT, STATE_FILE, TIER_DIR, prepare_state_dir
from stacks.services import SERVICE_TABLE
from stacks.wiring import USERS
from tests.conftest import fresh_state_dir
from tests.stacks.test_local_data_tier import group_pids

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 240
PARTITION_INTERVAL_S = 5  # the runner's schedule, shortened to be seen running


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stacks.local", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Platform:
    """What a test needs of a running platform, read from its state file and manifest."""

    def __init__(self, state_dir: Path, up_output: str) -> None:
        self.state_dir = state_dir
        self.up_output = up_output

    @property
    def state(self) -> dict[str, Any]:
        return json.loads((self.state_dir / STATE_FILE).read_text())

    @property
    def gateway(self) -> str:
        return str(self.state["gateway"])

    def component(self, name: str) -> dict[str, Any]:
        return next(c for c in self.state["components"] if c["name"] == name)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [c for c in self.state["components"] if c["kind"] == kind]

    def pids(self) -> dict[str, int]:
        return {
            p.name: p.pid for p in recorded_processes(self.state_dir / TIER_DIR / "processes.json")
        }

    def logs(self, *processes: str, lines: int = 40) -> str:
        """The runner's log and the last lines of some processes' logs, for a failure."""
        logs = Path(self.state["logs"])
        parts = []
        for path in [self.state_dir / "runner.log", *(logs / f"{p}.log" for p in processes)]:
            text = path.read_text(errors="replace") if path.exists() else "(none)"
            parts.append(f"--- {path}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)

    def pool_nodes(self) -> list[PoolNode]:
        return pool_nodes(self.component("pgpool")["address"], Path(self.state["pgpass"]))


@pytest.fixture(scope="module")
def platform() -> Iterator[Platform]:
    with fresh_state_dir("platform-") as state_dir:
        try:
            began = time.monotonic()
            result = cli(
                *("up", "--detach", "--state-dir", str(state_dir)),
                *("--port", "0", "--metrics-port", "0"),
                *("--partition-interval", str(PARTITION_INTERVAL_S)),
                timeout=START_TIMEOUT_S,
            )
            assert result.returncode == 0, result.stdout + result.stderr
            print(f"platform ready in {time.monotonic() - began:.1f} s")  # shown with -s
            yield Platform(state_dir, result.stdout)
        finally:
            cli("down", "--state-dir", str(state_dir))


# --- HTTP through the gateway ------------------------------------------------------------------


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    token: str | None = None,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    async with http.request(method, url, json=json_body, headers=all_headers) as response:
        text = await response.text()
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = text
        return response.status, body


async def shopper(http: aiohttp.ClientSession, gateway: str) -> str:
    """Register and log in a new shopper; the access token."""
    email = f"shopper-{uuid.uuid4().hex[:10]}@example.com"
    password = "journey-pass-42"
    status, body = await call(
        http,
        "POST",
        f"{gateway}/api/users/register",
        json_body={"email": email, "password": password, "full_name": "Test Shopper"},
    )
    assert status == 202, body
    status, body = await call(
        http, "POST", f"{gateway}/api/users/login", json_body={"email": email, "password": password}
    )
    assert status == 200, body
    return str(body["access_token"])


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus samples by (name, sorted labels)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


# --- the tests, in order -----------------------------------------------------------------------


def test_up_prints_the_status_table_and_how_to_try_it(platform: Platform) -> None:
    out = platform.up_output
    for name in (
        "pg-0",
        "pg-3",
        "pgpool",
        "redis-5",
        "memcached-2",
        "stripe-simulator",
        "warehouse-simulator",
        "mail-sink",
        "prometheus",
        "alertmanager",
        "alert-sink",
        "pg-3-exporter",
        "redis-5-exporter",
        "user-0",
        "product-1",
        "order-0",
        "payment-0",
        "inventory-0",
        "gateway",
        "outbox relay + saga workers",
        "partition maintenance",
    ):
        assert name in out, name
    assert f"gateway:  {platform.gateway}" in out
    assert out.count(f"curl -s '{platform.gateway}/api/products") == 2
    roles = sorted((n.role, n.status) for n in platform.pool_nodes())
    assert roles == [("primary", "up")] + [("standby", "up")] * 3
    status = cli("status", "--json", "--state-dir", str(platform.state_dir))
    assert status.returncode == 0, status.stderr
    rows = {r["component"]: r["state"] for r in json.loads(status.stdout)["rows"]}
    assert rows["gateway"] == "ready" and rows["product-1"] == "ready"
    assert rows["mail-sink"] == "ready"
    assert rows["prometheus"] == rows["alertmanager"] == rows["alert-sink"] == "ready"
    assert f"mail:     {platform.component('mail-sink')['url']}" in out
    assert sorted(rows[f"redis-{i}"] for i in range(6)) == ["master"] * 3 + ["replica"] * 3
    assert sum(rows[f"pg-{i}"].startswith("standby") for i in range(4)) == 3
    assert "orders_" in rows["partition maintenance"]


async def test_a_shoppers_journey_through_the_gateway(platform: Platform) -> None:
    """Register, log in, browse a category, search, view a product, add it to the cart,
    check out, pay (the saga charges the provider), see the order in the history; then the
    metrics show reads served by the replicas and the caches."""
    g = platform.gateway
    before = {n.node_id: n.select_cnt for n in platform.pool_nodes() if n.role == "standby"}
    business = {PAYMENT_SUCCESS_RATIO, CART_ABANDONMENT_RATIO, SEARCH_TOP3_RATIO}
    business.add(INVENTORY_TURNOVER_DAILY)
    counters = set().union(*(metric_names(r.expr) for r in RECORDINGS if r.name in business))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        # Prometheus first sees the business counters at 0: a counter's first sample is no
        # increase, so what the journey does must come after it.
        deadline = time.monotonic() + 60
        while unseen := {
            name
            for name in counters
            if not await prometheus_query(http, platform.state["prometheus"], name)
        }:
            assert time.monotonic() < deadline, f"Prometheus has not scraped {unseen}"
            await asyncio.sleep(1)
        token = await shopper(http, g)
        status, me = await call(http, "GET", f"{g}/api/users/me", token=token)
        assert status == 200 and me["full_name"] == "Test Shopper"

        status, categories = await call(http, "GET", f"{g}/api/products/categories")
        assert status == 200
        leaf = next(c for c in categories if c["slug"] == "laptops")
        assert leaf["parent"] == "electronics" and leaf["products"] > 0
        status, page = await call(
            http, "GET", f"{g}/api/products?category={leaf['slug']}&page_size=50"
        )
        assert status == 200 and page["items"] and page["total"] >= 10_000 // 24 - 1
        assert {item["category"] for item in page["items"]} == {leaf["slug"]}

        status, found = await call(http, "GET", f"{g}/api/products/search?q=wireles+laptp")
        assert status == 200 and found["items"]  # typos still match
        assert all("laptop" in hit["name"] for hit in found["items"][:3])
        # The storefront reports which hit was chosen (search relevance).
        status, _ = await call(
            http,
            "POST",
            f"{g}/api/products/search/selections",
            json_body={"position": 2, "action": "click"},
        )
        assert status == 204

        # A product in stock: its level comes from the inventory service, via the gateway.
        for item in page["items"]:
            status, level = await call(http, "GET", f"{g}/api/inventory/{item['sku']}")
            assert status == 200
            if level["available"] >= 2:
                product = item
                break
        else:
            pytest.fail("no product in stock on the first page")
        for _ in range(4):  # viewed again and again: the caches answer
            status, detail = await call(http, "GET", f"{g}/api/products/{product['id']}")
            assert status == 200 and detail["sku"] == product["sku"]

        status, cart = await call(
            http,
            "PUT",
            f"{g}/api/orders/cart/items",
            token=token,
            json_body={"sku": product["sku"], "quantity": 2},
        )
        assert status == 200 and cart["items"] == {product["sku"]: 2}
        status, order = await call(
            http,
            "POST",
            f"{g}/api/orders",
            token=token,
            json_body={"payment_token": "tok_visa"},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert status == 201, order
        assert order["total_cents"] == 2 * product["price_cents"]
        status, cart = await call(http, "GET", f"{g}/api/orders/cart", token=token)
        assert status == 200 and cart["items"] == {}  # checked out

        deadline = time.monotonic() + 30
        while True:  # the saga: reserve stock, charge the provider, confirm, ship
            status, current = await call(http, "GET", f"{g}/api/orders/{order['id']}", token=token)
            assert status == 200
            if current["status"] in ("shipped", "cancelled") or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert current["status"] == "shipped"
        # Shipped means the warehouse (its simulator process) took it, with these lines.
        warehouse = "http://" + platform.component("warehouse-simulator")["address"]
        async with http.get(f"{warehouse}/_sim/shipments") as answer:
            shipments = (await answer.json())["shipments"]
        [shipment] = [s for s in shipments if s["order_reference"] == f"order-{order['id']}"]
        assert current["shipment_id"] == shipment["id"]
        assert shipment["lines"] == [{"sku": product["sku"], "quantity": 2}]

        status, history = await call(http, "GET", f"{g}/api/orders", token=token)
        assert status == 200 and [o["id"] for o in history] == [order["id"]]
        status, _ = await call(http, "GET", f"{g}/api/orders")
        assert status == 401  # the gateway itself refuses a request without a token

    # Reads went to the replicas: pgpool counted SELECTs on the standbys.
    after = {n.node_id: n.select_cnt for n in platform.pool_nodes() if n.role == "standby"}
    assert sum(after.values()) > sum(before.values())
    # ... and to the caches: the product processes counted hits.
    hits = 0.0
    for process in platform.of_kind("service"):
        if process["name"].startswith("product-"):
            samples = scrape(f"http://{process['address']}/metrics")
            hits += total(samples, CACHE_REQUESTS, result="hit")
            assert total(samples, "db_query_duration_seconds_count", kind="read") >= 0
    assert hits >= 2
    # The gateway's own metrics saw every service's backend answer.
    gateway = scrape(platform.state["gateway_metrics"])
    for backend in ("be_user", "be_product", "be_order", "be_inventory"):
        assert total(gateway, "haproxy_backend_http_responses_total", proxy=backend, code="2xx") > 0
    # ... and the business dashboard's recordings have a value: a payment the provider took
    # (the other provider, sent nothing, records NaN), a cart checked out, a hit chosen from
    # the second place, units sold.
    expected: dict[str, Callable[[float], bool]] = {
        PAYMENT_SUCCESS_RATIO: lambda v: v == 1,
        CART_ABANDONMENT_RATIO: lambda v: 0 <= v < 1,
        SEARCH_TOP3_RATIO: lambda v: v == 1,
        INVENTORY_TURNOVER_DAILY: lambda v: v > 0,
    }
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        deadline = time.monotonic() + 60
        while True:
            values = {}
            for name in expected:
                found = await prometheus_query(http, platform.state["prometheus"], name)
                values[name] = [float(r["value"][1]) for r in found]
            wrong = {n: v for n, v in values.items() if not any(map(expected[n], v))}
            if not wrong or time.monotonic() > deadline:
                break
            await asyncio.sleep(2)
    assert not wrong, f"business recordings without their value: {wrong}"


async def prometheus_query(http: aiohttp.ClientSession, base: str, query: str) -> list[Any]:
    async with http.get(f"{base}/api/v1/query", params={"query": query}) as response:
        answer = await response.json()
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


async def test_prometheus_scrapes_everything_and_every_rule_reads_a_live_metric(
    platform: Platform,
) -> None:
    """After the journey: every target up, every metric a rule or an autoscaler reads exists
    (but the cluster-only ones, stacks.alerts.CLUSTER_ONLY_METRICS), and the gateway's
    requests per second, recorded from HAProxy's own counter, moves under load."""
    state = platform.state
    base = state["prometheus"]
    assert f"prometheus: {base}" in platform.up_output
    # The files it runs are the renders promtool accepts.
    checked = subprocess.run(
        ["promtool", "check", "config", str(platform.state_dir / "monitoring/prometheus.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        deadline = time.monotonic() + 60
        while True:
            async with http.get(f"{base}/api/v1/targets") as response:
                targets = (await response.json())["data"]["activeTargets"]
            down = [t["labels"].get("pod", t["scrapeUrl"]) for t in targets if t["health"] != "up"]
            if (targets and not down) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        assert targets and not down, f"targets not up: {down or 'none yet'}"
        jobs = {t["labels"]["job"] for t in targets}
        assert {"postgres", "redis", "gateway", "product", "order", "payment"} <= jobs
        assert len([t for t in targets if t["labels"]["job"] == "postgres"]) == 4
        assert len([t for t in targets if t["labels"]["job"] == "redis"]) == 6

        read = {
            **{f"alert {a.name}": metric_names(a.expr) for a in ALERTS},
            **{f"recording {r.name}": metric_names(r.expr) for r in RECORDINGS},
            **{
                f"{s.name}'s autoscaler": {s.scaling.custom_metric.name}
                for s in SERVICE_TABLE
                if s.scaling.custom_metric
            },
            **{
                f"dashboard {d.uid} panel {p.title!r}": set().union(
                    *(metric_names(q.expr) for q in p.queries)
                )
                for d in DASHBOARDS
                for p in d.panels()
            },
        }
        deadline = time.monotonic() + 60
        while True:
            async with http.get(f"{base}/api/v1/label/__name__/values") as response:
                present = set((await response.json())["data"])
            missing = {
                rule: sorted(names - present - set(CLUSTER_ONLY_METRICS))
                for rule, names in read.items()
                if names - present - set(CLUSTER_ONLY_METRICS)
            }
            if not missing or time.monotonic() > deadline:
                break
            await asyncio.sleep(2)
        assert not missing, f"rules read metrics nobody exports: {missing}"
        # A primary, seen through the exporters' extra query.
        roles = await prometheus_query(http, base, PG_IN_RECOVERY)
        assert sorted(r["value"][1] for r in roles) == ["0", "1", "1", "1"]
        # Every dashboard query is one this Prometheus evaluates (Grafana's rate window: at
        # least four scrapes, 20 s here).
        for dashboard in DASHBOARDS:
            for panel in dashboard.panels():
                for query in panel.queries:
                    expr = query.expr.replace(RATE_INTERVAL, "20s")
                    async with http.get(f"{base}/api/v1/query", params={"query": expr}) as answer:
                        evaluated = await answer.json()
                    assert evaluated["status"] == "success", (dashboard.uid, panel.title, evaluated)

        # Load through the gateway: its recorded rate rises above zero.
        for _ in range(10):
            statuses = await asyncio.gather(
                *(
                    call(http, "GET", f"{platform.gateway}/api/products/categories")
                    for _ in range(20)
                )
            )
            assert {status for status, _ in statuses} <= {200, 429}
        deadline = time.monotonic() + 60
        while True:
            rate = await prometheus_query(http, base, GATEWAY_RPS)
            if (rate and float(rate[0]["value"][1]) > 0) or time.monotonic() > deadline:
                break
            await asyncio.sleep(2)
        assert rate and float(rate[0]["value"][1]) > 0, rate


async def notified(
    http: aiohttp.ClientSession, sink: str, alertname: str, status: str, timeout_s: float
) -> list[dict[str, Any]]:
    """The alert sink's notifications of `alertname` once one has `status`, or [] by then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        async with http.get(f"{sink}/notifications", params={"alertname": alertname}) as answer:
            found = (await answer.json())["notifications"]
        if any(n["status"] == status for n in found):
            return list(found)
        await asyncio.sleep(2)
    return []


async def test_a_payment_service_that_stops_answering_pages_and_then_resolves(
    platform: Platform,
) -> None:
    """The payment process frozen (SIGSTOP: it runs, it answers nothing) past the alert's
    `for`: PaymentServiceUnavailable reaches the pager through Alertmanager's routing, never
    the chat, and resolves once the process answers again."""
    sink = platform.state["alert_sink"]
    payment = platform.pids()["payment-0"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        os.kill(payment, signal.SIGSTOP)
        try:
            firing = await notified(http, sink, "PaymentServiceUnavailable", "firing", 180)
        finally:
            os.kill(payment, signal.SIGCONT)
        assert firing, "PaymentServiceUnavailable never reached the pager"
        assert {n["receiver"] for n in firing} == {"pager"}
        [alert] = firing[0]["alerts"]
        assert alert["labels"]["severity"] == "critical"
        resolved = await notified(http, sink, "PaymentServiceUnavailable", "resolved", 120)
        assert resolved, "PaymentServiceUnavailable never resolved"
        assert {n["receiver"] for n in resolved} == {"pager"}


async def test_a_revoked_token_stops_working_on_every_service(platform: Platform) -> None:
    """Logging out (or changing the password) at the user service ends the token on the
    order service too, within its verdict cache (2 s), not at the token's expiry."""
    g = platform.gateway

    async def refused_everywhere(token: str) -> float:
        """Seconds until the order service and the user service both answer 401."""
        began = time.monotonic()
        while time.monotonic() - began < 5:
            orders, _ = await call(http, "GET", f"{g}/api/orders/cart", token=token)
            users, _ = await call(http, "GET", f"{g}/api/users/me", token=token)
            if orders == users == 401:
                return time.monotonic() - began
            assert {orders, users} <= {200, 401}
            await asyncio.sleep(0.1)
        raise AssertionError("a revoked token still works after 5 s")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        token = await shopper(http, g)
        assert (await call(http, "GET", f"{g}/api/orders/cart", token=token))[0] == 200
        assert (await call(http, "POST", f"{g}/api/users/logout", token=token))[0] == 204
        assert await refused_everywhere(token) < 3

        # A password change ends every session of the account, not only the one asking.
        email = f"shopper-{uuid.uuid4().hex[:10]}@example.com"
        password = "journey-pass-42"
        account = {"email": email, "password": password}
        assert (await call(http, "POST", f"{g}/api/users/register", json_body=account))[0] == 202
        sessions = []
        for _ in range(2):
            status, pair = await call(http, "POST", f"{g}/api/users/login", json_body=account)
            assert status == 200
            sessions.append(pair["access_token"])
        phone, laptop = sessions
        assert (await call(http, "GET", f"{g}/api/orders/cart", token=laptop))[0] == 200
        change = {"current_password": password, "new_password": "a-new-pass-42"}
        status, _ = await call(
            http, "POST", f"{g}/api/users/me/password", token=phone, json_body=change
        )
        assert status == 204
        assert await refused_everywhere(laptop) < 3


FEED_MINUTES = 2.0  # the stream's life in the test: past every timeout on its way
ORDER_EVERY_S = 25.0  # quiet gaps longer than the keep-alive (15 s) and the 5 s request timeout


async def test_the_live_feed_streams_through_the_gateway_for_minutes(platform: Platform) -> None:
    """A shopper's page holds `/api/inventory/feed` open through the gateway for minutes,
    across quiet gaps longer than any request timeout: the one connection stays open, every
    order's stock change arrives on it within seconds, and keep-alives fill the silences."""
    g = platform.gateway
    lines: list[tuple[float, bytes]] = []  # (when, line) as the page receives them
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        token = await shopper(http, g)
        _, page = await call(http, "GET", f"{g}/api/products?page_size=1")
        sku = page["items"][0]["sku"]
        feed = await http.get(f"{g}/api/inventory/feed", params={"sku": sku})
        assert feed.status == 200 and feed.headers["Content-Type"] == "text/event-stream"

        async def read() -> None:
            while line := await feed.content.readline():
                lines.append((time.monotonic(), line))
            lines.append((time.monotonic(), b"<closed>"))

        reader = asyncio.create_task(read())
        began, ordered = time.monotonic(), []
        try:
            await asyncio.sleep(1)  # subscribed
            while time.monotonic() - began < FEED_MINUTES * 60:
                status, body = await call(
                    http,
                    "POST",
                    f"{g}/api/orders",
                    token=token,
                    json_body={"items": [{"sku": sku, "quantity": 1}], "payment_token": "tok_visa"},
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )
                assert status in (200, 201), body
                ordered.append(time.monotonic())
                await asyncio.sleep(ORDER_EVERY_S)
        finally:
            reader.cancel()
            feed.close()

    assert b"<closed>" not in [line for _, line in lines], "the gateway cut the feed"
    events = [when for when, line in lines if line.startswith(b"data: ") and sku.encode() in line]
    for placed in ordered:  # each order's reservation reached the page within seconds
        assert any(0 <= when - placed < 5 for when in events), (placed - began, lines[-5:])
    keepalives = [when for when, line in lines if line == b": keep-alive\n"]
    assert len(keepalives) >= len(ordered) - 1  # every 25 s gap has one
    assert lines[-1][0] - began > FEED_MINUTES * 60 - 5


async def test_a_reset_through_the_gateway_arrives_in_the_sinks_mailbox(
    platform: Platform,
) -> None:
    """The user service's mailer sends the reset e-mail over SMTP (with AUTH) to the mail
    sink; its token, and only it, resets the password."""
    g, mailbox = platform.gateway, platform.component("mail-sink")["url"]
    email = f"shopper-{uuid.uuid4().hex[:10]}@example.com"
    account = {"email": email, "password": "journey-pass-42"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        assert (await call(http, "POST", f"{g}/api/users/register", json_body=account))[0] == 202
        asked = {"email": email}
        status, _ = await call(http, "POST", f"{g}/api/users/password-reset", json_body=asked)
        assert status == 202
        deadline = time.monotonic() + 30  # the order service's relay, then the mailer
        while not (
            mails := (await call(http, "GET", f"{mailbox}?to={quote(email)}"))[1]["messages"]
        ):
            assert time.monotonic() < deadline, "no reset e-mail in the sink after 30 s\n" + (
                platform.logs("user-0", "order-0", "mail-sink")
            )
            await asyncio.sleep(0.2)
        (mail,) = mails
        assert mail["subject"] == "Reset your password"
        token = re.search(r"^Reset token: (\S+)$", mail["text"], re.MULTILINE)
        assert token, mail["text"]
        confirm = {"token": token.group(1), "new_password": "after-reset-42"}
        status, _ = await call(
            http, "POST", f"{g}/api/users/password-reset/confirm", json_body=confirm
        )
        assert status == 204
        account["password"] = "after-reset-42"
        assert (await call(http, "POST", f"{g}/api/users/login", json_body=account))[0] == 200


def test_a_second_up_is_refused_while_it_runs(platform: Platform) -> None:
    result = cli("up", "--state-dir", str(platform.state_dir), "--port", "0")
    assert result.returncode == 1
    assert "already running" in result.stderr and "make down" in result.stderr


async def test_a_zone_lost_while_orders_are_placed_loses_no_acknowledged_order(
    platform: Platform,
) -> None:
    """SIGKILL the primary and the standby in its zone together (pg-0 and pg-3 share zone-a,
    as on GKE) while shoppers place orders: every commit was acknowledged by a standby in
    another zone, so pgpool's failover finds one holding them all and promotes it; orders are
    accepted again, every acknowledged order exists, both lost members rejoin as standbys, and
    DatabasePrimaryDown paged and resolved. Each client retries a failed order with its
    Idempotency-Key, as a client should: a key never yields two orders."""
    g = platform.gateway
    primary = next(n for n in platform.pool_nodes() if n.role == "primary")
    members = platform.of_kind("postgres")
    zone = {c["name"]: zone_of(int(c["name"].removeprefix("pg-")), ZONES) for c in members}
    old = next(c for c in members if c["address"] == primary.address)
    lost = [c for c in members if zone[c["name"]] == zone[old["name"]]]
    assert len(lost) == 2, zone  # the primary and its zone's other member
    acknowledged: dict[str, int] = {}  # Idempotency-Key -> order id
    outcomes: list[tuple[float, int]] = []  # (time, status) of every attempt
    killed_at: list[float] = []
    stop = asyncio.Event()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        token = await shopper(http, g)
        status, page = await call(http, "GET", f"{g}/api/products?page_size=20")
        skus = [item["sku"] for item in page["items"]]

        async def place(worker: int) -> None:
            n = 0
            while not stop.is_set():
                key, n = f"failover-{worker}-{n}-{uuid.uuid4().hex[:8]}", n + 1
                while not stop.is_set():  # retry this order until it is acknowledged
                    try:
                        status, body = await call(
                            http,
                            "POST",
                            f"{g}/api/orders",
                            token=token,
                            json_body={
                                "items": [{"sku": skus[n % len(skus)], "quantity": 1}],
                                "payment_token": "tok_visa",
                            },
                            headers={"Idempotency-Key": key},
                        )
                    except (aiohttp.ClientError, TimeoutError):
                        status, body = 0, None
                    outcomes.append((time.monotonic(), status))
                    await asyncio.sleep(0.25)  # ~12 attempts/s in all: under the rate limit
                    if status in (200, 201):
                        assert acknowledged.setdefault(key, body["id"]) == body["id"]
                        break

        async def drill() -> None:
            await asyncio.sleep(3)
            killed_at.append(time.monotonic())
            pids = platform.pids()
            for member in lost:  # the zone goes at once
                os.kill(pids[member["name"]], signal.SIGKILL)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                after = [t for t, s in outcomes if t > killed_at[0] and s in (200, 201)]
                if len(after) >= 20 and time.monotonic() - killed_at[0] > 5:
                    break
            stop.set()

        await asyncio.gather(drill(), *(place(i) for i in range(3)))

        before = [s for t, s in outcomes if t < killed_at[0]]
        after = [s for t, s in outcomes if t > killed_at[0]]
        ok_after = [t for t, s in outcomes if t > killed_at[0] and s in (200, 201)]
        print(
            f"zone-loss drill: {len(before)} attempts before the kill, {len(after)} after; "
            f"first acknowledged order {min(ok_after) - killed_at[0]:.1f} s after the kill"
            if ok_after
            else "no order after the kill"
        )
        assert before and all(s == 201 for s in before)
        assert len(ok_after) >= 20, f"orders after the failover: {after[-20:]}"

        # The new primary is in another zone. The runner restarts both lost members once
        # pgpool has detached them: the old primary rewinds into a standby of the new one,
        # and both are attached again.
        new_primary = next(n for n in await nodes_now(platform) if n.role == "primary")
        assert new_primary.address not in {c["address"] for c in lost}
        for member in lost:
            mine = await rejoined(platform, member["address"], timeout_s=90)
            print(
                f"{member['name']} back as a standby "
                f"{time.monotonic() - killed_at[0]:.1f} s after the kill"
            )
            assert (mine.role, mine.status) == ("standby", "up"), platform.logs(
                member["name"], "pgpool"
            )
        assert sorted(n.role for n in await nodes_now(platform)) == ["primary"] + ["standby"] * 3

        # While no member was a primary, the critical database alert fired and paged (its
        # hold scaled to the local Prometheus's pace: 1 s); the new primary resolved it.
        sink = platform.state["alert_sink"]
        firing = await notified(http, sink, "DatabasePrimaryDown", "firing", 30)
        assert firing, "DatabasePrimaryDown never reached the pager"
        assert {n["receiver"] for n in firing} == {"pager"}
        assert firing[0]["alerts"][0]["labels"]["severity"] == "critical"
        resolved = await notified(http, sink, "DatabasePrimaryDown", "resolved", 60)
        assert resolved, "DatabasePrimaryDown never resolved after the new primary took over"
        # The failover itself pages too (on GKE it is over before DatabasePrimaryDown's hold).
        failover = await notified(http, sink, "DatabaseFailover", "firing", 30)
        assert failover and {n["receiver"] for n in failover} == {"pager"}, failover

        # Every acknowledged order is there, on the new primary's timeline. (An attach makes
        # pgpool restart its children, which drops the services' pooled connections: a read
        # may fail once with a 5xx, and is retried as a client would; a 404 never is.)
        for key, order_id in acknowledged.items():
            status, body = await read_until_answered(http, f"{g}/api/orders/{order_id}", token)
            assert status == 200, (key, order_id, body)
        status, history = await read_until_answered(http, f"{g}/api/orders?limit=100", token)
        assert status == 200
        assert set(acknowledged.values()) <= {o["id"] for o in history}
        assert len(set(acknowledged.values())) == len(acknowledged)  # one order per key


async def place_confirmed(
    http: aiohttp.ClientSession, g: str, token: str, skus: list[str], n: int
) -> list[int]:
    """Place ``n`` orders and wait until the saga has confirmed each (stock committed, the
    payment captured): their ids."""
    ids = []
    for i in range(n):
        status, order = await call(
            http,
            "POST",
            f"{g}/api/orders",
            token=token,
            json_body={
                "items": [{"sku": skus[i % len(skus)], "quantity": 1}],
                "payment_token": "tok_visa",
            },
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert status == 201, order
        ids.append(order["id"])
    deadline = time.monotonic() + 60
    for order_id in ids:
        while True:
            status, current = await read_until_answered(http, f"{g}/api/orders/{order_id}", token)
            if current["status"] in ("confirmed", "shipped") or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert current["status"] in ("confirmed", "shipped"), current
    return ids


async def first_backup(platform: Platform) -> None:
    """Wait for the backup the runner takes once the platform is ready."""
    deadline = time.monotonic() + 120
    while not platform.state["backups"]["schedule"]["taken"]:
        assert time.monotonic() < deadline, platform.logs()
        await asyncio.sleep(1)


def primary_rows(platform: Platform, sql: str) -> list[dict[str, str]]:
    primary = next(n for n in platform.pool_nodes() if n.role == "primary")
    return psql(primary.address, sql, Path(platform.state["pgpass"]), database=USERS.app_database)


async def test_a_point_in_time_restore_brings_back_exactly_the_orders_before_it(
    platform: Platform,
) -> None:
    """Orders A, a moment T, orders B; `restore --target-time T`: every A order is back with its
    items, payment and stock movements, no B order is, and the platform takes (and confirms)
    new orders. RTO is the restore's wall time, RPO what was lost of what was acknowledged
    before T; both against the seed's 15 minutes and 1 hour."""
    g = platform.gateway
    await first_backup(platform)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        # A shopper per phase: the fraud rules allow a shopper 5 payments an hour.
        token, other = await shopper(http, g), await shopper(http, g)
        status, page = await call(http, "GET", f"{g}/api/products?page_size=20")
        skus = [item["sku"] for item in page["items"]]
        before = await place_confirmed(http, g, token, skus, 3)
        await asyncio.sleep(1)
        target = datetime.now(UTC)
        await asyncio.sleep(1)
        after = await place_confirmed(http, g, other, skus, 3)

        began = time.monotonic()
        restored = cli(
            "restore",
            "--state-dir",
            str(platform.state_dir),
            "--target-time",
            target.isoformat(),
            timeout=600,
        )
        rto = time.monotonic() - began
        assert restored.returncode == 0, restored.stdout + restored.stderr + platform.logs()
        assert "swap the restored data in" in restored.stdout

        ids = ",".join(str(i) for i in before + after)
        present = {
            int(r["id"]): r
            for r in primary_rows(
                platform,
                "SELECT o.id, o.status, "
                "(SELECT count(*) FROM order_items i WHERE i.order_id = o.id) AS items, "
                "(SELECT count(*) FROM payments p WHERE p.order_id = o.id) AS payments, "
                "(SELECT count(*) FROM inventory_events e WHERE e.reference = 'order:' || o.id) "
                f"AS stock_moves FROM orders o WHERE o.id IN ({ids})",
            )
        }
        lost = [i for i in before if i not in present]
        print(
            f"restore drill: RTO {rto:.1f} s (seed: 15 min), RPO {len(lost)} of {len(before)} "
            f"orders acknowledged before the target lost (seed: 1 h of data)"
        )
        assert not lost, (lost, restored.stdout)
        assert not set(after) & set(present), "orders placed after the target came back"
        for order_id in before:
            row = present[order_id]
            assert row["status"] in ("confirmed", "shipped"), row
            assert int(row["items"]) == 1 and int(row["payments"]) >= 1, row
            assert int(row["stock_moves"]) >= 2, row  # reserved, then sold

        # Afterwards the platform takes new orders, and the saga confirms them.
        status, history = await read_until_answered(http, f"{g}/api/orders", token)
        assert status == 200 and {o["id"] for o in history} == set(before)
        assert await place_confirmed(http, g, token, skus, 1)
    assert rto < 15 * 60


async def test_a_restore_outside_the_window_is_refused_and_latest_keeps_every_order(
    platform: Platform,
) -> None:
    """`status` lists the backups and the window; a target outside it, or without a time zone,
    is refused naming why, with nothing changed; `restore --latest` loses no order."""
    state_dir = str(platform.state_dir)
    await first_backup(platform)
    status = cli("status", "--state-dir", state_dir)
    assert "recovery window:" in status.stdout and " full " in status.stdout, status.stdout

    def servers() -> dict[str, int]:  # the long-running ones (jobs come and go)
        return {n: pid for n, pid in platform.pids().items() if n.startswith(("pg", "product"))}

    before = servers()
    early = cli("restore", "--state-dir", state_dir, "--target-time", "2020-01-01T00:00:00Z")
    assert early.returncode == 1 and "outside the recovery window" in early.stderr, early.stderr
    vague = cli("restore", "--state-dir", state_dir, "--target-time", "2026-12-06T10:15:00")
    assert vague.returncode == 2 and "has no time zone" in vague.stderr, vague.stderr
    assert servers() == before  # nothing was stopped or restarted
    g = platform.gateway
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        token = await shopper(http, g)
        _, page = await call(http, "GET", f"{g}/api/products?page_size=5")
        [order_id] = await place_confirmed(http, g, token, [page["items"][0]["sku"]], 1)
        latest = cli("restore", "--state-dir", state_dir, "--latest", timeout=600)
        assert latest.returncode == 0, latest.stdout + latest.stderr + platform.logs()
        status, order = await read_until_answered(http, f"{g}/api/orders/{order_id}", token)
        assert status == 200 and order["status"] in ("confirmed", "shipped"), order


async def alert_state(http: aiohttp.ClientSession, base: str, name: str) -> str | None:
    """Prometheus's state of one alert: pending, firing, or None (inactive)."""
    async with http.get(f"{base}/api/v1/alerts") as response:
        alerts = (await response.json())["data"]["alerts"]
    return next((a["state"] for a in alerts if a["labels"]["alertname"] == name), None)


async def test_wal_archiving_keeps_up_and_a_stopped_store_raises_a_warning(
    platform: Platform,
) -> None:
    """During a burst of orders every WAL segment reaches the store; with the store frozen
    (SIGSTOP), archiving fails, WalArchivingFailing fires as a warning routed to the chat,
    and once the store answers again the next segment is archived and the alert resolves."""
    g, prometheus = platform.gateway, platform.state["prometheus"]

    def archiver() -> dict[str, str]:
        return primary_rows(
            platform, "SELECT failed_count, last_archived_wal FROM pg_stat_archiver"
        )[0]

    def switch_wal() -> str:
        primary_rows(platform, "CREATE TABLE IF NOT EXISTS wal_drill (at timestamptz)")
        primary_rows(platform, "INSERT INTO wal_drill VALUES (now())")
        return primary_rows(platform, "SELECT pg_walfile_name(pg_switch_wal()) AS segment")[0][
            "segment"
        ]

    failed_before = int(archiver()["failed_count"])
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        _, page = await call(http, "GET", f"{g}/api/products?page_size=20")
        skus = [item["sku"] for item in page["items"]]
        shoppers = [await shopper(http, g) for _ in range(3)]
        await asyncio.gather(*(place_confirmed(http, g, t, skus, 4) for t in shoppers))
        closed = switch_wal()
        deadline = time.monotonic() + 30
        while archiver()["last_archived_wal"] < closed:
            assert time.monotonic() < deadline, (closed, archiver(), platform.logs("pg-0"))
            await asyncio.sleep(0.5)
        assert int(archiver()["failed_count"]) == failed_before

        store = platform.pids()["object-store"]
        os.kill(store, signal.SIGSTOP)
        try:
            switch_wal()
            deadline = time.monotonic() + 180
            while (state := await alert_state(http, prometheus, "WalArchivingFailing")) != "firing":
                assert time.monotonic() < deadline, (state, archiver())
                await asyncio.sleep(2)
            async with http.get(f"{platform.state['alertmanager']}/api/v2/alerts") as answer:
                routed = [
                    a
                    for a in await answer.json()
                    if a["labels"]["alertname"] == "WalArchivingFailing"
                ]
            assert routed and routed[0]["labels"]["severity"] == "warning"
            assert [r["name"] for r in routed[0]["receivers"]] == ["chat"]
        finally:
            os.kill(store, signal.SIGCONT)
        closed = switch_wal()
        deadline = time.monotonic() + 120
        while archiver()["last_archived_wal"] < closed or await alert_state(
            http, prometheus, "WalArchivingFailing"
        ):
            assert time.monotonic() < deadline, (archiver(), platform.logs("pg-0"))
            await asyncio.sleep(2)


async def nodes_now(platform: Platform, timeout_s: float = 30) -> list[PoolNode]:
    """pgpool's view of the members. pgpool restarts its children when a node fails over or
    is attached again, and a query arriving then is dropped: it is asked again."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return platform.pool_nodes()
        except LocalPlatformError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def rejoined(platform: Platform, address: str, timeout_s: float) -> PoolNode:
    """pgpool's view of the member at ``address`` once it is an attached standby (or at the
    deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        mine = next(n for n in await nodes_now(platform) if n.address == address)
        if (mine.role, mine.status) == ("standby", "up") or time.monotonic() > deadline:
            return mine
        await asyncio.sleep(1)


async def read_until_answered(
    http: aiohttp.ClientSession, url: str, token: str, timeout_s: float = 30
) -> tuple[int, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = await call(http, "GET", url, token=token)
        if status < 500 or time.monotonic() > deadline:
            return status, body
        await asyncio.sleep(0.5)


def test_down_leaves_no_process_and_no_port(platform: Platform) -> None:
    state = platform.state
    runner = state["runner"]
    pids = group_pids(list(platform.pids().values()))
    ports = {what: port for what, port in state["ports"].items() if "pcp" not in what}
    assert len(pids) > 40 and pid_alive(runner["pid"], runner["start_ticks"])
    # The partition maintenance ran at start and again on its schedule since (a run during
    # the failover may have failed and been retried: `runs` counts the ones that worked, and
    # a loaded machine may have been slow about it: a few intervals are allowed).
    deadline = time.monotonic() + 6 * PARTITION_INTERVAL_S
    while platform.state["partitions"]["runs"] < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert platform.state["partitions"]["runs"] >= 3

    result = cli("down", "--state-dir", str(platform.state_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stopped the platform" in result.stdout

    assert not pid_alive(runner["pid"], runner["start_ticks"])
    assert sorted(pid for pid in pids if pid_alive(pid)) == []
    assert sorted(what for what, port in ports.items() if is_taken(port)) == []
    status = cli("status", "--state-dir", str(platform.state_dir))
    assert status.returncode == 3 and "not running" in status.stdout
    again = cli("down", "--state-dir", str(platform.state_dir))
    assert again.returncode == 0 and "nothing was running" in again.stdout


# --- bad local conditions: one clear message each ------------------------------------------


def test_a_taken_gateway_port_is_named_with_what_to_do() -> None:
    import socket

    with socket.socket() as sock, fresh_state_dir("platform-port-") as state_dir:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = cli("up", "--state-dir", str(state_dir), "--port", str(port))
        assert result.returncode == 1
        message = result.stderr.strip()
        assert message.count("\n") == 0, message
        assert f"port {port} on 127.0.0.1 (gateway) is already taken" in message
        assert f"--port {port + 1}" in message
        assert list(state_dir.iterdir()) == []  # nothing was started or written


def test_a_stale_state_dir_is_cleared_and_a_foreign_one_refused() -> None:
    with fresh_state_dir("platform-stale-") as state_dir:
        gone = subprocess.Popen(["true"])  # a PID that no longer runs, as after a crash
        gone.wait()
        (state_dir / TIER_DIR).mkdir()
        (state_dir / TIER_DIR / "processes.json").write_text(
            json.dumps(
                {
                    "processes": [
                        {
                            "name": "pg-0",
                            "pid": gone.pid,
                            "start_ticks": 1,
                            "log": "x",
                            "stop_signal": 2,
                        }
                    ]
                }
            )
        )
        (state_dir / STATE_FILE).write_text(
            json.dumps({"state": "ready", "runner": {"pid": gone.pid, "start_ticks": 5}})
        )
        said: list[str] = []
        prepare_state_dir(state_dir, say=said.append)
        assert not state_dir.exists()
        assert said and "earlier run (ready)" in said[0] and "no longer runs" in said[0]

    with fresh_state_dir("platform-foreign-") as state_dir:
        (state_dir / "notes.txt").write_text("mine")
        with pytest.raises(LocalPlatformError, match=r"did not write \(notes.txt\).*--state-dir"):
            prepare_state_dir(state_dir)
        assert (state_dir / "notes.txt").exists()


def test_status_and_down_of_a_platform_that_never_ran() -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="platform-none-"))
    try:
        status = cli("status", "--state-dir", str(state_dir))
        assert status.returncode == 3 and "make up" in status.stdout
        down = cli("down", "--state-dir", str(state_dir))
        assert down.returncode == 0 and "nothing was running" in down.stdout
    finally:
        state_dir.rmdir()


def test_a_package_that_cannot_be_installed_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stacks.local import system

    def apt_fails(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 100 if "install" in argv else 0)

    monkeypatch.setattr(system.subprocess, "run", apt_fails)
    with pytest.raises(LocalPlatformError) as caught:
        system.install(["postgresql-15", "pgpool2"])
    message = str(caught.value)
    assert "\n" not in message and "exit code 100" in message
    assert "apt-get install postgresql-15 pgpool2" in message and "apt-get -f install" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="as another user PostgreSQL runs as that user")
def test_a_checkout_closed_to_postgres_keeps_its_state_under_var_tmp() -> None:
    from stacks.local.state import reachable_state_dir

    closed = Path(tempfile.mkdtemp())  # mode 0700, like root's home on Debian
    try:
        moved = reachable_state_dir(closed / "checkout" / ".local")
        assert moved.parent == Path("/var/tmp") and moved.name.startswith("shop-platform-local-")
        assert moved == reachable_state_dir(closed / "checkout" / ".local")  # stable: down finds it
        assert moved != reachable_state_dir(closed / "other" / ".local")  # one per checkout
        closed.chmod(0o711)
        assert reachable_state_dir(closed / "checkout" / ".local") == closed / "checkout" / ".local"
    finally:
        closed.rmdir()
