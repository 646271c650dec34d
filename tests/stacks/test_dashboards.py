"""The dashboards, rendered: one per tier and one for the business, every query valid PromQL
(promtool), each of the seed's business metrics drawn. The local platform's Prometheus
evaluates every query in tests/stacks/test_local_platform.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from components.conf.grafana import DATASOURCE_UID, RATE_INTERVAL, dashboard_json
from stacks.alerts import (
    CART_ABANDONMENT_RATIO,
    INVENTORY_TURNOVER_DAILY,
    PAYMENT_SUCCESS_RATIO,
    SEARCH_TOP3_RATIO,
    SEARCH_ZERO_RESULT_RATIO,
    error_ratio,
    metric_names,
)
from stacks.dashboards import DASHBOARDS

PROMTOOL = shutil.which("promtool")
RENDERED = {d.uid: json.loads(dashboard_json(d)) for d in DASHBOARDS}


def targets(model: dict) -> list[dict]:
    return [t for panel in model["panels"] for t in panel.get("targets", [])]


def test_one_dashboard_per_tier_and_one_for_the_business() -> None:
    assert sorted(RENDERED) == sorted(
        f"platform-{tier}" for tier in ("edge", "services", "data", "cache", "business")
    )
    assert len({m["title"] for m in RENDERED.values()}) == len(RENDERED)


def test_every_query_is_on_the_pinned_prometheus_datasource() -> None:
    for uid, model in RENDERED.items():
        assert targets(model), uid
        for target in targets(model):
            assert target["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, uid
            assert target["expr"].strip(), uid


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is missing: `make system-packages`")
def test_every_query_is_promql_that_promtool_accepts(tmp_path: Path) -> None:
    """Each query as a recording rule (Grafana's interval variable as a window): promtool
    parses every one, and names the panel of any it refuses."""
    rules = [
        {"record": f"dashboard:{uid.replace('-', '_')}:{i}", "expr": expr}
        for uid, model in RENDERED.items()
        for i, expr in enumerate(t["expr"].replace(RATE_INTERVAL, "5m") for t in targets(model))
    ]
    path = tmp_path / "dashboards.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


def test_the_seeds_business_metrics_each_have_a_panel() -> None:
    business = {
        name for t in targets(RENDERED["platform-business"]) for name in metric_names(t["expr"])
    }
    assert {
        CART_ABANDONMENT_RATIO,
        SEARCH_ZERO_RESULT_RATIO,
        SEARCH_TOP3_RATIO,
        PAYMENT_SUCCESS_RATIO,
        INVENTORY_TURNOVER_DAILY,
    } <= business


def test_what_an_alert_measures_is_what_the_dashboard_draws() -> None:
    exprs = {t["expr"] for t in targets(RENDERED["platform-services"])}
    assert error_ratio(RATE_INTERVAL) in exprs
