"""Grafana dashboards as code: typed panels rendered to dashboard JSON with Grafana's own
foundation SDK (`grafana-foundation-sdk`, its models for the Grafana 11.3 that
kube-prometheus-stack ships).

A dashboard here is a handful of rows of PromQL panels over one Prometheus datasource; the
composition (stacks/dashboards.py) says what they show, components/monitoring.py puts each
into a ConfigMap the Grafana sidecar loads. The tests read the rendered JSON back: every
query passes promtool and, on the local platform, evaluates against a live Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

# The Prometheus datasource kube-prometheus-stack's Grafana provisions, pinned by uid in its
# values (components/monitoring.py), so every panel names it rather than "the default".
DATASOURCE_UID = "prometheus"
# The ConfigMap label Grafana's dashboard sidecar loads dashboards from.
DASHBOARD_LABEL = ("grafana_dashboard", "1")
# Grafana's own interval variables: a rate window of at least four scrapes, and the step.
RATE_INTERVAL = "$__rate_interval"
GRID_WIDTH = 24
PANEL_HEIGHT = 8
_UID = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")  # Grafana allows 40 characters


@dataclass(frozen=True)
class Query:
    """One PromQL target; `legend` in Grafana's template syntax (`{{service}}`)."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"  # a Grafana unit id: percentunit, s, reqps, bytes, ...
    kind: Literal["timeseries", "stat"] = "timeseries"
    description: str = ""
    width: int = 12  # of the grid's 24 columns

    def __post_init__(self) -> None:
        if not self.queries:
            raise ValueError(f"panel {self.title!r}: no query")
        if not 1 <= self.width <= GRID_WIDTH:
            raise ValueError(f"panel {self.title!r}: width {self.width} is not 1..{GRID_WIDTH}")


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Dashboard:
    uid: str  # stable: links and bookmarks keep working across renders
    title: str
    description: str
    rows: tuple[Row, ...]
    tags: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not _UID.match(self.uid):
            raise ValueError(f"dashboard uid {self.uid!r}: lower-case letters, digits, '-', <= 40")

    def panels(self) -> Iterator[Panel]:
        for row in self.rows:
            yield from row.panels


def dashboard_json(spec: Dashboard, refresh: str = "30s") -> str:
    """The dashboard as Grafana's JSON model (schema of Grafana 11.3)."""
    source = DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
    built = (
        dashboard_builder.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(list(spec.tags))
        .refresh(refresh)
        .time("now-6h", "now")
        .timezone("browser")
        .readonly()  # provisioned from code: an edit in the UI would be lost on the next load
    )
    panel_id = 0
    for row in spec.rows:
        panel_id += 1
        built = built.with_row(dashboard_builder.Row(row.title).id(panel_id))
        for panel in row.panels:
            panel_id += 1
            builder = timeseries.Panel() if panel.kind == "timeseries" else stat.Panel()
            builder = (
                builder.id(panel_id)
                .title(panel.title)
                .description(panel.description)
                .datasource(source)
                .unit(panel.unit)
                .span(panel.width)
                .height(PANEL_HEIGHT)
            )
            for index, query in enumerate(panel.queries):
                target = (
                    prometheus.Dataquery()
                    .expr(query.expr)
                    .legend_format(query.legend or "__auto")
                    .ref_id(chr(ord("A") + index))
                    .datasource(source)
                )
                builder = builder.with_target(target.instant() if panel.kind == "stat" else target)
            built = built.with_panel(builder)
    return json.dumps(built.build(), cls=JSONEncoder, indent=2, sort_keys=True)
