"""The monitoring stack's files, rendered once for GKE and for the local platform: the alerting
and recording rules, the PostgreSQL exporter's extra queries, Alertmanager's routing tree,
and Prometheus's own configuration where it scrapes static targets (the local platform).

On GKE the rules are a PrometheusRule (components/monitoring.py) and Alertmanager's file a
Secret; locally they are files next to a real Prometheus and Alertmanager. `promtool` checks
both renders in the tests, and unit-tests every alert.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import yaml

Severity = Literal["critical", "warning", "info"]


@dataclass(frozen=True)
class Alert:
    """One alerting rule. Critical pages (any hour), warning goes to chat in business hours,
    info only shows on dashboards."""

    name: str
    severity: Severity
    expr: str
    for_: str
    summary: str

    def __post_init__(self) -> None:
        duration_s(self.for_)  # a hold Prometheus would refuse fails here, naming it


@dataclass(frozen=True)
class Recording:
    """A recording rule: `expr` evaluated and stored as the series `name`."""

    name: str
    expr: str


# How often Prometheus scrapes and evaluates on GKE (kube-prometheus-stack's values): the
# alerts' `for` holds are written for it.
GKE_INTERVAL_S = 30

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")


def duration_s(text: str) -> float:
    """A Prometheus duration (`90s`, `5m`, `1h30m`) in seconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNITS[u] for n, u in parts)


def rule_groups(
    alerts: Iterable[Alert], recordings: Iterable[Recording] = (), *, hold_scale: float = 1.0
) -> list[dict[str, Any]]:
    """The rule groups: the recording rules first, then the alerts, one group per severity.

    `hold_scale` multiplies every alert's `for` (the local platform, whose Prometheus runs
    faster than GKE's, scales its holds by as much: the expressions stay the same)."""
    groups: list[dict[str, Any]] = []
    records = [{"record": r.name, "expr": r.expr} for r in recordings]
    if records:
        groups.append({"name": "platform-recordings", "rules": records})
    by_severity: dict[str, list[dict[str, Any]]] = {}
    for alert in alerts:
        by_severity.setdefault(alert.severity, []).append(
            {
                "alert": alert.name,
                "expr": alert.expr,
                "for": (
                    alert.for_
                    if hold_scale == 1
                    else f"{round(duration_s(alert.for_) * hold_scale)}s"
                ),
                "labels": {"severity": alert.severity},
                "annotations": {"summary": alert.summary},
            }
        )
    groups += [{"name": f"platform-{s}", "rules": rules} for s, rules in by_severity.items()]
    return groups


def rules_file(
    alerts: Iterable[Alert], recordings: Iterable[Recording] = (), *, hold_scale: float = 1.0
) -> str:
    """A Prometheus rule file (`rule_files:`) holding `rule_groups`."""
    groups = rule_groups(alerts, recordings, hold_scale=hold_scale)
    return yaml.safe_dump({"groups": groups}, sort_keys=False)


# --- the PostgreSQL exporter --------------------------------------------------------------------

# prometheus-postgres-exporter 0.11 (Debian 12, the GKE image's too) exports no replication
# role by default: this query (`--extend.query-path`) adds `pg_recovery_in_recovery`, 1 on a
# standby and 0 on the primary, which the primary-down alert reads.
PG_IN_RECOVERY = "pg_recovery_in_recovery"  # the exporter names it <query>_<column>
PG_REPLAY_LAG = "pg_recovery_replay_lag_seconds"
# The primary's WAL archiving (pg_stat_archiver): when it last succeeded and last failed.
PG_ARCHIVED_AT = "pg_archiver_last_archived_time"
PG_ARCHIVE_FAILED_AT = "pg_archiver_last_failed_time"
PG_ARCHIVE_FAILURES = "pg_archiver_failed_count"
POSTGRES_QUERIES: dict[str, Any] = {
    "pg_recovery": {
        # A standby that has replayed all it received is not behind, however long ago the
        # last write was (so an idle primary does not look like lag).
        "query": """SELECT CASE WHEN pg_is_in_recovery() THEN 1 ELSE 0 END AS in_recovery,
  CASE WHEN NOT pg_is_in_recovery()
         OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
       ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)
  END AS replay_lag_seconds""",
        "master": True,  # once per server, not per database
        "metrics": [
            {
                "in_recovery": {
                    "usage": "GAUGE",
                    "description": "1 on a standby (in recovery), 0 on the primary",
                }
            },
            {
                "replay_lag_seconds": {
                    "usage": "GAUGE",
                    "description": "How far a standby's replay is behind what it received "
                    "(0 on the primary, and on a standby that has replayed everything)",
                }
            },
        ],
    },
    # Only a primary archives (archive_mode=on): a standby reports zeros.
    "pg_archiver": {
        "query": """SELECT failed_count,
  coalesce(extract(epoch FROM last_archived_time), 0) AS last_archived_time,
  coalesce(extract(epoch FROM last_failed_time), 0) AS last_failed_time
FROM pg_stat_archiver""",
        "master": True,
        "metrics": [
            {"failed_count": {"usage": "COUNTER", "description": "WAL segments that failed"}},
            {
                "last_archived_time": {
                    "usage": "GAUGE",
                    "description": "When a WAL segment last reached the backup repository",
                }
            },
            {
                "last_failed_time": {
                    "usage": "GAUGE",
                    "description": "When archiving a WAL segment last failed",
                }
            },
        ],
    },
}


def postgres_exporter_queries() -> str:
    return yaml.safe_dump(POSTGRES_QUERIES, sort_keys=False)


# --- Alertmanager ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Receivers:
    """Where the two notifying routes send: each an Alertmanager receiver body (GKE: PagerDuty
    and Slack; locally webhooks to a sink that records what it got)."""

    pager: Mapping[str, Any]
    chat: Mapping[str, Any]


def pagerduty_and_slack(routing_key: str, slack_webhook_url: str, slack_channel: str) -> Receivers:
    return Receivers(
        pager={"pagerduty_configs": [{"routing_key": routing_key, "send_resolved": True}]},
        chat={
            "slack_configs": [
                {"api_url": slack_webhook_url, "channel": slack_channel, "send_resolved": True}
            ]
        },
    )


def webhooks(pager_url: str, chat_url: str) -> Receivers:
    return Receivers(
        pager={"webhook_configs": [{"url": pager_url, "send_resolved": True}]},
        chat={"webhook_configs": [{"url": chat_url, "send_resolved": True}]},
    )


@dataclass(frozen=True)
class Timing:
    """How Alertmanager groups and repeats (GKE: the defaults; the local drills: shorter)."""

    group_wait: str = "30s"
    group_interval: str = "5m"
    repeat_interval: str = "4h"
    pager_repeat_interval: str = "1h"


DEFAULT_TIMING = Timing()


def alertmanager_config(
    receivers: Receivers,
    *,
    time_zone: str,
    business_hours: tuple[str, str] = ("09:00", "18:00"),
    timing: Timing = DEFAULT_TIMING,
) -> str:
    """Critical pages at any hour, warnings go to chat in business hours (weekdays, in
    `time_zone`, an IANA name), info stays on dashboards."""
    start, end = business_hours
    config = {
        "route": {
            "receiver": "dashboard-only",
            "group_by": ["alertname", "namespace", "service"],
            "group_wait": timing.group_wait,
            "group_interval": timing.group_interval,
            "repeat_interval": timing.repeat_interval,
            "routes": [
                {
                    "matchers": ['severity="critical"'],
                    "receiver": "pager",
                    "repeat_interval": timing.pager_repeat_interval,
                },
                {
                    "matchers": ['severity="warning"'],
                    "receiver": "chat",
                    "active_time_intervals": ["business-hours"],
                },
            ],
        },
        "time_intervals": [
            {
                "name": "business-hours",
                "time_intervals": [
                    {
                        "weekdays": ["monday:friday"],
                        "times": [{"start_time": start, "end_time": end}],
                        "location": time_zone,
                    }
                ],
            }
        ],
        "inhibit_rules": [
            # While something pages, do not also chat about the same service.
            {
                "source_matchers": ['severity="critical"'],
                "target_matchers": ['severity="warning"'],
                "equal": ["namespace", "service"],
            }
        ],
        "receivers": [
            {"name": "dashboard-only"},
            {"name": "pager", **receivers.pager},
            {"name": "chat", **receivers.chat},
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


# --- Prometheus, scraping static targets (the local platform) ---------------------------------


@dataclass(frozen=True)
class ScrapeJob:
    """One scrape job: each target (`host:port`) with the labels its series carry, as the
    ServiceMonitors and PodMonitors give them on GKE (`namespace`, `service`, `pod`)."""

    name: str
    targets: Mapping[str, Mapping[str, str]]
    metrics_path: str = "/metrics"
    interval: str | None = None  # None: the global scrape_interval


def prometheus_config(
    jobs: Sequence[ScrapeJob],
    *,
    rule_files: Sequence[str],
    alertmanagers: Sequence[str],
    scrape_interval: str = "15s",
    evaluation_interval: str = "15s",
) -> str:
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"scrape job names must be unique: {names}")
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": list(rule_files),
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]},
        "scrape_configs": [
            {
                "job_name": job.name,
                "metrics_path": job.metrics_path,
                **({"scrape_interval": job.interval} if job.interval else {}),
                "static_configs": [
                    {"targets": [address], "labels": dict(labels)}
                    for address, labels in job.targets.items()
                ],
            }
            for job in jobs
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)
