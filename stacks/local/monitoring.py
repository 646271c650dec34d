"""The monitoring stack on the local platform, from the files GKE deploys.

- the exporters the GKE pods carry as sidecars: one `prometheus-postgres-exporter` per
  PostgreSQL member (with the same extra query, the replication role) and one
  `prometheus-redis-exporter` per Redis node;
- Prometheus scraping every service process, the gateway's own exporter, the exporters and
  itself, with the rule groups of the GKE PrometheusRule (`stacks.alerts`, one renderer);
- Alertmanager with the GKE routing tree, its pager and chat receivers pointed at the alert
  sink (`services.alertsink`), which keeps what it is sent for tests and people to read.

Not scraped, because Debian 12 packages no exporter for them (as the GKE images carry none):
PgPool-II (its view of the members is in `make status`, from `SHOW pool_nodes`) and Memcached
(the services' `cache_requests_total{layer="l3"}` counts its hits and misses).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from components.conf.prometheus import (
    GKE_INTERVAL_S,
    ScrapeJob,
    Timing,
    alertmanager_config,
    postgres_exporter_queries,
    prometheus_config,
    rules_file,
    webhooks,
)
from components.conf.redis import exporter_passwords
from stacks.alerts import ALERTS, RECORDINGS
from stacks.config import AlertingConfig
from stacks.local.apps import AppProcess
from stacks.local.data_tier import DataTier
from stacks.local.ports import HOST
from stacks.local.process import make_dir, write_file
from stacks.local.system import ALERTMANAGER, POSTGRES_EXPORTER, PROMETHEUS, REDIS_EXPORTER
from stacks.services import SERVICES

TIME_ZONE = AlertingConfig().business_hours_time_zone  # the stacks' default
# Locally a notification should not wait minutes: the drills read it.
LOCAL_TIMING = Timing(group_wait="1s", group_interval="5s", repeat_interval="1h")
# The rules are evaluated every second, and the PostgreSQL members scraped every 2 s: a local
# failover takes 5-10 s, and DatabasePrimaryDown's hold, scaled to this pace, must see the
# gap (at GKE's 30 s pace a failover faster than its 30 s hold pages no one).
EVALUATION_INTERVAL_S = 1.0
POSTGRES_SCRAPE_INTERVAL = "2s"


class LocalMonitoring:
    """Its processes (`apps`, in start order) and, at `write_files`, their configuration."""

    def __init__(
        self,
        state_dir: Path,
        tier: DataTier,
        services: Mapping[str, Sequence[AppProcess]],
        gateway_metrics_port: int,
        scrape_interval_s: float,
    ) -> None:
        self.dir = state_dir / "monitoring"
        self.tier = tier
        self.scrape_interval = f"{scrape_interval_s:g}s"
        # Prometheus here evaluates faster than on GKE, and every alert's hold is shortened by
        # as much: a drill sees an alert fire in seconds, as GKE would in minutes.
        self.hold_scale = EVALUATION_INTERVAL_S / GKE_INTERVAL_S
        ports = tier.ports
        self.prometheus_port = ports.take("prometheus")
        self.alertmanager_port = ports.take("alertmanager")
        sink_port = ports.take("alert sink")
        self.sink_url = f"http://{HOST}:{sink_port}"
        self.redis_passwords = self.dir / "redis-exporter.json"
        self.queries = self.dir / "postgres-exporter-queries.yaml"

        self.exporters: list[AppProcess] = []
        jobs: list[ScrapeJob] = []
        pg_targets: dict[str, dict[str, str]] = {}
        for member in tier.postgres.topology.members:
            port = ports.take(f"{member.name} exporter")
            dsn = f"postgresql://postgres@{member.host}:{member.port}/postgres?sslmode=disable"
            self.exporters.append(
                AppProcess(
                    name=f"{member.name}-exporter",
                    kind="exporter",
                    argv=[
                        POSTGRES_EXPORTER,
                        f"--web.listen-address={HOST}:{port}",
                        f"--extend.query-path={self.queries}",
                        "--log.level=warn",
                    ],
                    # libpq reads the superuser's password from the tier's password file.
                    env={"DATA_SOURCE_NAME": dsn, "PGPASSFILE": str(tier.postgres.pgpass)},
                    port=port,
                    ready_url=f"http://{HOST}:{port}/metrics",
                )
            )
            pg_targets[f"{HOST}:{port}"] = {"namespace": "data", "pod": member.name}
        jobs.append(ScrapeJob("postgres", pg_targets, interval=POSTGRES_SCRAPE_INTERVAL))
        redis_targets: dict[str, dict[str, str]] = {}
        for node in tier.redis.spec.nodes:
            port = ports.take(f"{node.name} exporter")
            self.exporters.append(
                AppProcess(
                    name=f"{node.name}-exporter",
                    kind="exporter",
                    argv=[
                        REDIS_EXPORTER,
                        f"-web.listen-address={HOST}:{port}",
                        f"-redis.addr=redis://{node.endpoint}",
                        f"-redis.password-file={self.redis_passwords}",
                        "-is-cluster",
                    ],
                    env={},
                    port=port,
                    ready_url=f"http://{HOST}:{port}/health",
                )
            )
            redis_targets[f"{HOST}:{port}"] = {"namespace": "cache", "pod": node.name}
        jobs.append(ScrapeJob("redis", redis_targets))
        for name, processes in services.items():
            svc = SERVICES[name]
            jobs.append(
                ScrapeJob(
                    name,
                    {
                        p.address: {"namespace": svc.namespace, "service": name, "pod": p.name}
                        for p in processes
                    },
                )
            )
        gateway = SERVICES["gateway"]
        jobs.append(
            ScrapeJob(
                "gateway",
                {
                    f"{HOST}:{gateway_metrics_port}": {
                        "namespace": gateway.namespace,
                        "service": "gateway",
                        "pod": "gateway",
                    }
                },
            )
        )
        jobs.append(
            ScrapeJob(
                "prometheus",
                {
                    f"{HOST}:{self.prometheus_port}": {
                        "namespace": "monitoring",
                        "pod": "prometheus",
                    }
                },
            )
        )
        self.jobs = jobs

        self.sink = AppProcess(
            name="alert-sink",
            kind="monitoring",
            argv=[sys.executable, "-u", "-m", "services.alertsink", "--port", str(sink_port)],
            env={"PYTHONUNBUFFERED": "1"},
            port=sink_port,
            ready_url=f"{self.sink_url}/notifications",
        )
        self.alertmanager = AppProcess(
            name="alertmanager",
            kind="monitoring",
            argv=[
                ALERTMANAGER,
                f"--config.file={self.dir / 'alertmanager.yaml'}",
                f"--storage.path={self.dir / 'alertmanager'}",
                f"--web.listen-address={HOST}:{self.alertmanager_port}",
                "--cluster.listen-address=",  # one instance: no gossip
                "--log.level=warn",
            ],
            env={},
            port=self.alertmanager_port,
            ready_url=f"http://{HOST}:{self.alertmanager_port}/-/ready",
        )
        self.prometheus = AppProcess(
            name="prometheus",
            kind="monitoring",
            argv=[
                PROMETHEUS,
                f"--config.file={self.dir / 'prometheus.yaml'}",
                f"--storage.tsdb.path={self.dir / 'prometheus'}",
                "--storage.tsdb.retention.time=2d",
                f"--web.listen-address={HOST}:{self.prometheus_port}",
                "--log.level=warn",
            ],
            env={},
            port=self.prometheus_port,
            ready_url=f"http://{HOST}:{self.prometheus_port}/-/ready",
        )

    @property
    def prometheus_url(self) -> str:
        return f"http://{HOST}:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://{HOST}:{self.alertmanager_port}"

    def apps(self) -> list[AppProcess]:
        return [*self.exporters, self.sink, self.alertmanager, self.prometheus]

    def write_files(self) -> None:
        """Every file the processes read (the tier's Redis password exists by now)."""
        make_dir(self.dir)
        write_file(self.queries, postgres_exporter_queries())
        write_file(
            self.redis_passwords,
            exporter_passwords(self.tier.redis.nodes, self.tier.redis.password),
            mode=0o600,
        )
        write_file(
            self.dir / "rules.yaml", rules_file(ALERTS, RECORDINGS, hold_scale=self.hold_scale)
        )
        write_file(
            self.dir / "alertmanager.yaml",
            alertmanager_config(
                webhooks(f"{self.sink_url}/pager", f"{self.sink_url}/chat"),
                time_zone=TIME_ZONE,
                timing=LOCAL_TIMING,
            ),
        )
        write_file(
            self.dir / "prometheus.yaml",
            prometheus_config(
                self.jobs,
                rule_files=[str(self.dir / "rules.yaml")],
                alertmanagers=[f"{HOST}:{self.alertmanager_port}"],
                scrape_interval=self.scrape_interval,
                evaluation_interval=f"{EVALUATION_INTERVAL_S:g}s",
            ),
        )
