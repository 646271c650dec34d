"""The dashboard renderer: Grafana's JSON model, every panel on the pinned datasource."""

from __future__ import annotations

import json

import pytest

from components.conf.grafana import DATASOURCE_UID, Dashboard, Panel, Query, Row, dashboard_json

SPEC = Dashboard(
    uid="example",
    title="Example",
    description="Two rows",
    tags=("t",),
    rows=(
        Row("First", (Panel("Rate", (Query("sum(rate(x_total[5m]))", "{{pod}}"),), unit="reqps"),)),
        Row(
            "Second",
            (
                Panel("Now", (Query("max(y)"),), kind="stat", width=6),
                Panel("Two lines", (Query("a"), Query("b", "b line"))),
            ),
        ),
    ),
)


def test_a_dashboard_renders_grafanas_json_model() -> None:
    model = json.loads(dashboard_json(SPEC))
    assert (model["uid"], model["title"], model["tags"]) == ("example", "Example", ["t"])
    assert model["editable"] is False  # provisioned from code
    assert [p["type"] for p in model["panels"]] == [
        "row",
        "timeseries",
        "row",
        "stat",
        "timeseries",
    ]
    ids = [p["id"] for p in model["panels"]]
    assert len(set(ids)) == len(ids)
    rate, now, two = (p for p in model["panels"] if p["type"] != "row")
    assert rate["fieldConfig"]["defaults"]["unit"] == "reqps"
    assert rate["targets"] == [
        {
            "datasource": {"type": "prometheus", "uid": DATASOURCE_UID},
            "expr": "sum(rate(x_total[5m]))",
            "legendFormat": "{{pod}}",
            "refId": "A",
        }
    ]
    assert now["targets"][0]["instant"] is True and now["gridPos"]["w"] == 6
    assert [(t["refId"], t["legendFormat"]) for t in two["targets"]] == [
        ("A", "__auto"),
        ("B", "b line"),
    ]
    # Panels never overlap: each starts where the one before it ended, row by row.
    cells = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in model["panels"]]
    assert len(set(cells)) == len(cells)


@pytest.mark.parametrize("uid", ["Upper", "with space", "x" * 41, ""])
def test_a_uid_grafana_would_refuse_fails_naming_it(uid: str) -> None:
    with pytest.raises(ValueError, match="uid"):
        Dashboard(uid=uid, title="t", description="", rows=())


def test_a_panel_without_a_query_or_off_the_grid_fails_naming_it() -> None:
    with pytest.raises(ValueError, match="'Empty'"):
        Panel("Empty", ())
    with pytest.raises(ValueError, match="width 25"):
        Panel("Wide", (Query("up"),), width=25)
