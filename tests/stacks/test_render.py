"""The offline renders: the seed's numbers in prod, smaller but valid dev and staging, every
manifest valid against Kubernetes 1.30, and the platform's hardening visible in the output."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from components.conf.grafana import DASHBOARD_LABEL, DATASOURCE_UID, dashboard_json
from components.conf.pgpool import SPARE_CLIENTS
from stacks.alerts import RECORDINGS
from stacks.dashboards import DASHBOARDS
from stacks.gateway import JWT_KEY_ENV
from stacks.services import SERVICE_TABLE, SERVICES, Dependency, users_of
from tests.conftest import STACKS, StackRender

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "CronJob")
PROMETHEUS_OPERATOR_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def workloads(render: StackRender) -> list[dict[str, Any]]:
    return [m for m in render.manifests() if m["kind"] in WORKLOAD_KINDS]


def conf_value(text: str, key: str) -> str:
    match = re.search(rf"^{re.escape(key)}\s*=\s*'?([^'\n]*)'?", text, re.MULTILINE)
    assert match, f"{key} not set"
    return match.group(1)


# --- the seed's numbers in prod -----------------------------------------------------------------


def test_prod_node_pools_are_the_seeds(prod: StackRender) -> None:
    pools = {p["name"]: p for p in prod.inputs("gcp:container/nodePool:NodePool")}
    machine = {name: pool["nodeConfig"]["machineType"] for name, pool in pools.items()}
    assert machine == {
        "apps": "e2-standard-4",
        "databases": "c2-standard-8",
        "caches": "n2-highmem-2",
        "payments": "n2d-standard-4",
    }
    assert pools["payments"]["nodeConfig"]["confidentialNodes"] == {"enabled": True}
    floor = sum(p["autoscaling"]["totalMinNodeCount"] for p in pools.values())
    ceiling = sum(p["autoscaling"]["totalMaxNodeCount"] for p in pools.values())
    assert floor >= 6 and ceiling == 20  # the seed's cluster autoscaler envelope
    for name in ("databases", "caches", "payments"):
        assert pools[name]["nodeConfig"]["taints"] == [
            {"key": "shop.platform/dedicated", "value": name, "effect": "NO_SCHEDULE"}
        ]
    assert "taints" not in pools["apps"]["nodeConfig"]
    for pool in pools.values():
        assert pool["management"] == {"autoRepair": True, "autoUpgrade": True}
        assert pool["upgradeSettings"]["strategy"] == "SURGE"
        assert len(pool["nodeLocations"]) == 3


def test_prod_postgres_is_a_primary_and_three_zonal_replicas_behind_pgpool(
    prod: StackRender,
) -> None:
    members = [s for s in prod.objects("StatefulSet") if s["metadata"]["name"].startswith("pg-")]
    assert len(members) == 4
    zone_of, waits_for = {}, {}
    for member in members:
        name = member["metadata"]["name"]
        term = pod_spec(member)["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        (zone_of[name],) = term["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
        claim = member["spec"]["volumeClaimTemplates"][0]["spec"]
        assert claim["storageClassName"] == "postgres-ssd"
        env = {e["name"]: e.get("value") for e in pod_spec(member)["containers"][0]["env"]}
        quorum = re.fullmatch(r"ANY 1 \((.*)\)", env["PG_SYNCHRONOUS_STANDBY_NAMES"])
        assert quorum, env["PG_SYNCHRONOUS_STANDBY_NAMES"]
        waits_for[name] = {n.strip('" ') for n in quorum.group(1).split(",")}
    assert set(zone_of.values()) == {"europe-west1-b", "europe-west1-c", "europe-west1-d"}
    # Who is where, and whose acknowledgement a commit on each (as primary) waits for: any
    # standby outside its zone, never the one beside it (pg-3 shares pg-0's zone).
    assert zone_of["pg-3"] == zone_of["pg-0"]
    for name, quorum in waits_for.items():
        assert quorum == {m for m, zone in zone_of.items() if zone != zone_of[name]}, name
    ssd = prod.object("StorageClass", "postgres-ssd")
    assert ssd["parameters"] == {"type": "pd-ssd"}

    pgpool = prod.object("StatefulSet", "pgpool", "data")
    assert pgpool["spec"]["replicas"] == 3
    conf = prod.object("ConfigMap", "pgpool-config", "data")["data"]["pgpool.conf"]
    # Every service pod at its maxReplicas fits (stacks/config.py), with room for the jobs.
    assert conf_value(conf, "num_init_children") == "100"
    assert conf_value(conf, "max_pool") == "2"
    assert conf_value(conf, "load_balance_mode") == "on"
    assert conf_value(conf, "use_watchdog") == "on"
    assert conf_value(conf, "auto_failback") == "off"
    assert len(re.findall(r"^backend_hostname\d+", conf, re.MULTILINE)) == 4
    assert "failover.sh" in conf_value(conf, "failover_command")
    assert "follow_primary.sh" in conf_value(conf, "follow_primary_command")

    postgresql = prod.object("ConfigMap", "postgres-config", "data")["data"]["postgresql.conf"]
    assert not re.search(r"^synchronous_standby_names", postgresql, re.MULTILINE)  # per member
    assert conf_value(postgresql, "archive_mode") == "on"
    assert "archive-push" in conf_value(postgresql, "archive_command")


def test_prod_backups_follow_the_seed(prod: StackRender) -> None:
    schedules = {c["metadata"]["name"]: c["spec"]["schedule"] for c in prod.objects("CronJob")}
    assert schedules["pg-backup-full"] == "0 2 * * *"  # daily at 02:00 UTC
    assert schedules["pg-backup-incr"] == "0 */6 * * *"  # every 6 hours
    assert schedules["pg-backup-secondary"] == "0 3 * * 0"  # the weekly cross-region full
    assert "partition-maintenance" in schedules
    # The stanza exists once the members run, before any backup: archiving works from the start.
    [stanza] = pod_spec(prod.object("Job", "pg-backup-stanza", "data"))["containers"][0]["command"][
        2:
    ]
    assert "stanza-create" in stanza and stanza.endswith("check")
    secondary = prod.object("CronJob", "pg-backup-secondary", "data")
    [command] = pod_spec(secondary)["containers"][0]["command"][2:]
    assert command.endswith("--type=full --repo=2 backup")

    backrest = configparser.ConfigParser()
    backrest.read_string(
        prod.object("ConfigMap", "pgbackrest-job", "data")["data"]["pgbackrest.conf"]
    )
    repo = backrest["global"]
    assert (repo["repo1-type"], repo["repo2-type"]) == ("gcs", "gcs")
    assert repo["repo1-retention-full-type"] == "time"
    assert repo["repo1-retention-full"] == "7"  # 7-day point-in-time recovery
    assert repo["repo2-retention-full"] == "90"
    assert (repo["repo2-retention-archive-type"], repo["repo2-retention-archive"]) == ("full", "1")
    # The servers push every WAL segment to both repositories.
    server = configparser.ConfigParser()
    server.read_string(
        prod.object("ConfigMap", "postgres-config", "data")["data"]["pgbackrest.conf"]
    )
    assert server["global"]["repo2-gcs-bucket"] == repo["repo2-gcs-bucket"]


def test_the_bucket_lifecycles_agree_with_what_pgbackrest_keeps(prod: StackRender) -> None:
    """pgBackRest expires its own backups and WAL and rewrites its info files: no rule moves
    an object to a class whose minimum storage outlives it, nothing targets a prefix no one
    writes, and old versions go once the retention no longer needs them."""
    backrest = configparser.ConfigParser()
    backrest.read_string(
        prod.object("ConfigMap", "pgbackrest-job", "data")["data"]["pgbackrest.conf"]
    )
    repos = {
        backrest["global"][f"repo{n}-gcs-bucket"]: int(
            backrest["global"][f"repo{n}-retention-full"]
        )
        for n in (1, 2)
    }
    buckets = {b["name"]: b for b in prod.inputs("gcp:storage/bucket:Bucket")}
    assert set(buckets) == set(repos)
    minimum_days = {"STANDARD": 0, "NEARLINE": 30, "COLDLINE": 90, "ARCHIVE": 365}
    for name, keep_days in repos.items():
        bucket = buckets[name]
        assert bucket["uniformBucketLevelAccess"] is True
        assert bucket["publicAccessPrevention"] == "enforced"
        assert minimum_days[bucket["storageClass"]] <= keep_days, name
        for rule in bucket["lifecycleRules"]:
            assert rule["action"]["type"] == "Delete", rule  # no class transitions
            assert "matchesPrefixes" not in rule["condition"], rule
            assert rule["condition"]["daysSinceNoncurrentTime"] == keep_days, rule
        assert bucket["softDeletePolicy"]["retentionDurationSeconds"] == min(keep_days, 90) * 86400
    primary, secondary = sorted(buckets.values(), key=lambda b: b["name"])
    assert (primary["location"], primary["storageClass"]) == ("EUROPE-WEST1", "STANDARD")
    assert (secondary["location"], secondary["storageClass"]) == ("EUROPE-WEST4", "COLDLINE")


def test_prod_backs_up_the_stateful_namespaces_with_backup_for_gke(prod: StackRender) -> None:
    (plan,) = prod.inputs("gcp:gkebackup/backupPlan:BackupPlan")
    config = plan["backupConfig"]
    assert config["selectedNamespaces"]["namespaces"] == ["data", "cache"]
    assert config["includeVolumeData"] is True and config["includeSecrets"] is True
    assert plan["backupSchedule"]["cronSchedule"] == "0 1 * * *"
    retention = plan["retentionPolicy"]
    assert retention["backupRetainDays"] >= 7  # at least pgBackRest's recovery window
    assert 0 < retention["backupDeleteLockDays"] <= retention["backupRetainDays"]
    (cluster,) = prod.inputs("gcp:container/cluster:Cluster")
    assert cluster["addonsConfig"]["gkeBackupAgentConfig"] == {"enabled": True}


def test_only_the_backup_writers_reach_the_metadata_server(prod: StackRender) -> None:
    """Workload Identity hands out Google tokens from the GKE metadata server: egress to it is
    allowed exactly from the pods that write backups (the servers archive WAL)."""
    reaching = set()
    for policy in prod.objects("NetworkPolicy"):
        spec = policy["spec"]
        for rule in spec.get("egress", []):
            blocks = {peer.get("ipBlock", {}).get("cidr") for peer in rule.get("to", [])}
            if blocks & {"169.254.169.254/32", "169.254.169.252/32"}:
                app = spec["podSelector"].get("matchLabels", {}).get("app")
                reaching.add((policy["metadata"]["namespace"], app))
    assert reaching == {("data", "postgres"), ("data", "pgbackrest")}
    members = [s for s in prod.objects("StatefulSet") if s["metadata"]["name"].startswith("pg-")]
    for member in members:
        sidecar = next(c for c in pod_spec(member)["containers"] if c["name"] == "pgbackrest")
        name = member["metadata"]["name"]
        assert {"name": "PGPASSFILE", "value": f"/var/run/postgresql/.pgpass.{name}"} in sidecar[
            "env"
        ]


def test_prod_caches(prod: StackRender) -> None:
    nodes = [prod.object("StatefulSet", f"redis-{i}", "cache") for i in range(6)]
    assert all(node["spec"]["replicas"] == 1 for node in nodes)
    zone_of = {}
    for i, node in enumerate(nodes):
        term = pod_spec(node)["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        (zone_of[f"redis-{i}-0"],) = term["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
    assert sorted(zone_of.values()) == sorted(
        ["europe-west1-b", "europe-west1-c", "europe-west1-d"] * 2
    )
    bootstrap = prod.object("ConfigMap", "redis-config", "cache")["data"]["bootstrap.sh"]
    # Who replicates whom, as the bootstrap forms it: never a replica in its master's zone.
    (pairs,) = re.findall(r"^PAIRS='(.*)'$", bootstrap, re.MULTILINE)
    replica_of = {
        replica.split(".")[0]: master.split(".")[0]
        for replica, master in (pair.split("=") for pair in pairs.split())
    }
    assert sorted(replica_of) == ["redis-3-0", "redis-4-0", "redis-5-0"]
    assert sorted(replica_of.values()) == ["redis-0-0", "redis-1-0", "redis-2-0"]
    for replica, master in replica_of.items():
        assert zone_of[replica] != zone_of[master], (replica, master)
    assert prod.object("Job", "redis-bootstrap", "cache")
    memcached = prod.object("StatefulSet", "memcached", "cache")
    assert memcached["spec"]["replicas"] == 3
    for workload in (*nodes, memcached):
        assert pod_spec(workload)["nodeSelector"] == {"shop.platform/pool": "caches"}


@pytest.mark.parametrize("service", [s.name for s in SERVICE_TABLE])
def test_prod_hpa_is_the_service_tables(prod: StackRender, service: str) -> None:
    svc = SERVICES[service]
    hpa = prod.object("HorizontalPodAutoscaler", service, svc.namespace)["spec"]
    scaling = svc.scaling
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (scaling.min_replicas, scaling.max_replicas)
    targets = {
        m["resource"]["name"]: m["resource"]["target"]["averageUtilization"]
        for m in hpa["metrics"]
        if m["type"] == "Resource"
    }
    assert targets == {"cpu": scaling.cpu_percent, "memory": scaling.memory_percent}
    up, down = (
        hpa["behavior"]["scaleUp"]["policies"][0],
        hpa["behavior"]["scaleDown"]["policies"][0],
    )
    assert (up["value"], up["periodSeconds"]) == (
        scaling.scale_up.percent,
        scaling.scale_up.period_seconds,
    )
    assert (down["value"], down["periodSeconds"]) == (
        scaling.scale_down.percent,
        scaling.scale_down.period_seconds,
    )
    custom = [m for m in hpa["metrics"] if m["type"] in ("Pods", "External")]
    if scaling.custom_metric:
        (metric,) = custom
        source = metric["pods"] if scaling.custom_metric.per_pod else metric["external"]
        assert source["metric"]["name"] == scaling.custom_metric.name
        assert source["target"] == {
            "type": "AverageValue",
            "averageValue": scaling.custom_metric.target,
        }
    else:
        assert custom == []


def test_prod_services_get_the_seeds_cache_ttls(prod: StackRender) -> None:
    product = prod.object("Deployment", "product", "shop")
    env = {e["name"]: e["value"] for e in pod_spec(product)["containers"][0]["env"]}
    assert env["CACHE_TTL_SESSIONS"] == str(24 * 3600)
    assert env["CACHE_TTL_CATALOG"] == "3600"
    assert env["CACHE_TTL_SEARCH"] == str(15 * 60)
    assert env["CACHE_TTL_POPULAR_PRODUCTS"] == str(30 * 60)
    assert env["CACHE_TTL_CARTS"] == str(7 * 24 * 3600)
    assert env["DATABASE_HOST"] == "pgpool.data.svc.cluster.local"
    assert len(env["MEMCACHED_NODES"].split(",")) == 3
    assert len(env["REDIS_NODES"].split(",")) == 6


def test_prod_alerts_carry_the_seeds_thresholds(prod: StackRender) -> None:
    rules = prod.object("PrometheusRule", "platform-alerts", "monitoring")["spec"]["groups"]
    by_name = {rule["alert"]: rule for group in rules for rule in group["rules"] if "alert" in rule}
    assert by_name["HighErrorRate"]["expr"].endswith("> 0.05")
    assert by_name["SlowResponses"]["expr"].endswith("> 5")
    assert by_name["HighCpu"]["expr"].endswith("> 0.8")
    assert by_name["HighMemory"]["expr"].endswith("> 0.8")
    assert by_name["LowCacheHitRatio"]["expr"].endswith("< 0.8")
    assert by_name["DiskFilling"]["expr"].endswith("> 0.85")
    severities = {
        group["name"]: {r["labels"]["severity"] for r in group["rules"]}
        for group in rules
        if group["name"] != "platform-recordings"
    }
    recorded = {
        r["record"] for g in rules if g["name"] == "platform-recordings" for r in g["rules"]
    }
    # What the gateway's HPA reads, and the business metrics.
    assert recorded == {r.name for r in RECORDINGS} >= {"gateway_requests_per_second"}
    assert severities == {
        "platform-critical": {"critical"},
        "platform-warning": {"warning"},
        "platform-info": {"info"},
    }
    routing = yaml.safe_load(
        prod.object("Secret", "alertmanager-routing", "monitoring")["stringData"][
            "alertmanager.yaml"
        ]
    )
    routes = {r["receiver"]: r for r in routing["route"]["routes"]}
    assert routes["pager"]["matchers"] == ['severity="critical"']
    assert routes["chat"]["active_time_intervals"] == ["business-hours"]
    assert routing["route"]["receiver"] == "dashboard-only"  # info never leaves the dashboard
    [hours] = routing["time_intervals"][0]["time_intervals"]
    assert hours["location"] == "Europe/Brussels" and hours["weekdays"] == ["monday:friday"]


def test_prod_grafana_loads_the_dashboards_as_code(prod: StackRender) -> None:
    """Each dashboard a ConfigMap the chart's Grafana sidecar loads, over the datasource uid
    its panels name; Grafana's admin password generated, not the chart's default."""
    loaded = {
        m["metadata"]["name"]: json.loads(next(iter(m["data"].values())))
        for m in prod.objects("ConfigMap")
        if m["metadata"]["labels"].get(DASHBOARD_LABEL[0]) == DASHBOARD_LABEL[1]
    }
    assert loaded == {f"dashboard-{d.uid}": json.loads(dashboard_json(d)) for d in DASHBOARDS}
    assert all(
        m["metadata"]["namespace"] == "monitoring"
        for m in prod.objects("ConfigMap")
        if m["metadata"]["name"].startswith("dashboard-")
    )
    [stack] = [r for r in prod.inputs("kubernetes:helm.sh/v3:Release") if r["name"] == "prometheus"]
    grafana = stack["values"]["grafana"]
    sidecar = grafana["sidecar"]
    assert (sidecar["dashboards"]["label"], sidecar["dashboards"]["labelValue"]) == DASHBOARD_LABEL
    assert sidecar["datasources"]["uid"] == DATASOURCE_UID
    admin = prod.object("Secret", grafana["admin"]["existingSecret"], "monitoring")
    assert set(admin["stringData"]) == {
        grafana["admin"]["userKey"],
        grafana["admin"]["passwordKey"],
    }
    assert "adminPassword" not in grafana


# --- dev and staging: smaller, still valid -------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_every_service_pod_fits_pgpool_at_the_hpa_maxima(
    renders: dict[str, StackRender], stack: str
) -> None:
    """Each open connection pins a pgpool child: the pods' pools at their HPA maxima must fit
    the children of every pgpool, or pods wait for a child forever (seen locally)."""
    render = renders[stack]
    pgpool = render.object("StatefulSet", "pgpool", "data")["spec"]["replicas"]
    conf = render.object("ConfigMap", "pgpool-config", "data")["data"]["pgpool.conf"]
    slots = pgpool * int(conf_value(conf, "num_init_children"))
    held = 0
    for svc in users_of(Dependency.POSTGRES):
        hpa = render.object("HorizontalPodAutoscaler", svc.name, svc.namespace)
        container = pod_spec(render.object("Deployment", svc.name, svc.namespace))["containers"][0]
        pool = int({e["name"]: e.get("value") for e in container["env"]}["DATABASE_POOL_MAX"])
        assert pool >= 1
        held += hpa["spec"]["maxReplicas"] * pool
    assert 0 < held <= slots - SPARE_CLIENTS


def test_dev_and_staging_are_smaller_than_prod(renders: dict[str, StackRender]) -> None:
    def nodes(render: StackRender) -> int:
        return sum(
            p["autoscaling"]["totalMaxNodeCount"]
            for p in render.inputs("gcp:container/nodePool:NodePool")
        )

    def members(render: StackRender) -> int:
        return len(
            [s for s in render.objects("StatefulSet") if s["metadata"]["name"].startswith("pg-")]
        )

    assert nodes(renders["dev"]) < nodes(renders["staging"]) < nodes(renders["prod"])
    assert members(renders["dev"]) == 2 and members(renders["staging"]) == 3
    assert renders["dev"].object("StatefulSet", "pgpool", "data")["spec"]["replicas"] == 1
    dev_pgpool = renders["dev"].object("ConfigMap", "pgpool-config", "data")["data"]["pgpool.conf"]
    assert conf_value(dev_pgpool, "use_watchdog") == "off"
    assert (
        renders["dev"].object("HorizontalPodAutoscaler", "product", "shop")["spec"]["maxReplicas"]
        == 2
    )


# --- the manifests are valid Kubernetes ---------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_manifests_validate_strictly_against_kubernetes_1_30(
    renders: dict[str, StackRender], stack: str
) -> None:
    from cloudcoil.models.prometheus_operator import v1 as prometheus_operator

    checked = set()
    for manifest in renders[stack].manifests():
        kind = manifest["kind"]
        if kind in PROMETHEUS_OPERATOR_KINDS:
            # Custom resources: prometheus-operator's own schema, unknown keys refused too.
            model = getattr(prometheus_operator, kind).model_validate(manifest)
            assert_no_unknown_keys(
                manifest, model.model_dump(by_alias=True, exclude_unset=True), kind
            )
        else:
            kubernetes_validate.validate(manifest, "1.30", strict=True)
        checked.add(kind)
    assert {
        "Deployment",
        "StatefulSet",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
    } <= checked


def assert_no_unknown_keys(given: Any, known: Any, path: str) -> None:
    if isinstance(given, dict):
        assert isinstance(known, dict), path
        for key, value in given.items():
            assert key in known, f"{path}.{key}: not in the custom resource's schema"
            assert_no_unknown_keys(value, known[key], f"{path}.{key}")
    elif isinstance(given, list):
        for i, (a, b) in enumerate(zip(given, known, strict=True)):
            assert_no_unknown_keys(a, b, f"{path}[{i}]")


@pytest.mark.parametrize("stack", STACKS)
def test_numbers_are_integers_not_floats(renders: dict[str, StackRender], stack: str) -> None:
    floats = [
        p
        for p in (renders[stack].out / "manifests").rglob("*.yaml")
        if re.search(r":\s\d+\.0\s*$", p.read_text(), re.MULTILINE)
    ]
    assert floats == []


@pytest.mark.slow
def test_checkov_finds_nothing_in_the_prod_render(prod: StackRender) -> None:
    checkov = os.environ.get("CHECKOV") or shutil.which("checkov")
    if not checkov or not Path(checkov).exists():
        pytest.skip("checkov is not installed (make test installs it in .tools/checkov)")
    done = subprocess.run(
        [
            checkov,
            "-d",
            str(prod.out / "manifests"),
            "--framework",
            "kubernetes",
            "--compact",
            "--quiet",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    import json

    report = json.loads(done.stdout)
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']}" for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0, failed
    assert summary["passed"] > 500
    assert summary["parsing_errors"] == 0


# --- hardening visible in every render ----------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_every_pod_is_restricted(renders: dict[str, StackRender], stack: str) -> None:
    for workload in workloads(renders[stack]):
        spec = pod_spec(workload)
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), name
        assert not any("hostPath" in v for v in spec.get("volumes", [])), name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["runAsUser"] >= 10000, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert set(container["resources"]) == {"requests", "limits"}, name
            assert "@sha256:" in container["image"], f"{name}: image not pinned by digest"


@pytest.mark.parametrize("stack", STACKS)
def test_hpa_owned_deployments_have_no_replicas_and_a_pdb(
    renders: dict[str, StackRender], stack: str
) -> None:
    render = renders[stack]
    pdbs = {
        (p["metadata"]["namespace"], p["metadata"]["name"])
        for p in render.objects("PodDisruptionBudget")
    }
    for hpa in render.objects("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]["name"]
        deployment = render.object("Deployment", target, hpa["metadata"]["namespace"])
        assert "replicas" not in deployment["spec"]
        assert (hpa["metadata"]["namespace"], target) in pdbs


@pytest.mark.parametrize("stack", STACKS)
def test_every_namespace_denies_by_default(renders: dict[str, StackRender], stack: str) -> None:
    render = renders[stack]
    namespaces = {n["metadata"]["name"] for n in render.objects("Namespace")}
    deny = {
        p["metadata"]["namespace"]
        for p in render.objects("NetworkPolicy")
        if p["spec"]["podSelector"] == {}
        and "ingress" not in p["spec"]
        and "egress" not in p["spec"]
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    }
    assert deny == namespaces
    for namespace in render.objects("Namespace"):
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_payment_is_reachable_only_from_order(prod: StackRender) -> None:
    policy = prod.object("NetworkPolicy", "allow-payment", "payments")["spec"]
    sources = [peer for rule in policy["ingress"] for peer in rule["from"]]
    app_sources = [p["podSelector"]["matchLabels"]["app"] for p in sources if "podSelector" in p]
    assert app_sources == ["order"]
    namespaces = [p["namespaceSelector"] for p in sources if "podSelector" not in p]
    assert namespaces == [{"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}]  # scrapes
    assert (
        pod_spec(prod.object("Deployment", "payment", "payments"))["tolerations"][0]["value"]
        == "payments"
    )


def test_only_the_gateway_is_exposed(prod: StackRender) -> None:
    exposed = [
        s["metadata"]["name"]
        for s in prod.objects("Service")
        if s["spec"].get("type") in ("LoadBalancer", "NodePort")
    ]
    assert exposed == ["gateway"]
    open_ingress = [
        p["metadata"]["name"]
        for p in prod.objects("NetworkPolicy")
        for rule in p["spec"].get("ingress", [])
        for peer in rule["from"]
        if peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0"
    ]
    assert open_ingress == ["allow-gateway"]


def test_gateway_listens_on_the_pod_and_routes_by_the_table(prod: StackRender) -> None:
    cfg = prod.object("ConfigMap", "gateway-config", "shop")["data"]["haproxy.cfg"]
    assert "bind 0.0.0.0:8080" in cfg and "bind 0.0.0.0:8404" in cfg
    for svc in SERVICE_TABLE:
        if svc.route:
            assert f"{svc.name}-pods.{svc.namespace}.svc.cluster.local:8080" in cfg
    assert "payment" not in cfg
    mounts = pod_spec(prod.object("Deployment", "gateway", "shop"))["containers"][0]["volumeMounts"]
    assert {"name": "config", "mountPath": "/etc/haproxy", "readOnly": True} in mounts


def test_gateway_verifies_tokens_with_the_key_from_the_signing_secret(prod: StackRender) -> None:
    cfg = prod.object("ConfigMap", "gateway-config", "shop")["data"]["haproxy.cfg"]
    assert f'jwt_verify("HS256","${{{JWT_KEY_ENV}}}")' in cfg
    gateway = pod_spec(prod.object("Deployment", "gateway", "shop"))["containers"][0]
    ref = {e["name"]: e.get("valueFrom") for e in gateway["env"]}[JWT_KEY_ENV]
    assert ref == {"secretKeyRef": {"name": "jwt-signing", "key": "key"}}
    # The Secret it names exists in the gateway's namespace and is the services' key.
    signing = prod.object("Secret", "jwt-signing", "shop")["stringData"]["key"]
    assert signing not in cfg
    payments = prod.object("Secret", "jwt-signing", "payments")["stringData"]["key"]
    assert signing == payments


def test_prod_cluster_is_private_and_hardened(prod: StackRender) -> None:
    (cluster,) = prod.inputs("gcp:container/cluster:Cluster")
    assert cluster["privateClusterConfig"]["enablePrivateNodes"] is True
    assert cluster["workloadIdentityConfig"]["workloadPool"] == "acme-shop-prod.svc.id.goog"
    assert cluster["enableShieldedNodes"] is True
    assert cluster["enableLegacyAbac"] is False
    assert cluster["removeDefaultNodePool"] is True
    assert cluster["datapathProvider"] == "ADVANCED_DATAPATH"
    assert cluster["releaseChannel"] == {"channel": "STABLE"}
    assert cluster["maintenancePolicy"]["recurringWindow"]["recurrence"]
    assert cluster["location"] == "europe-west1" and len(cluster["nodeLocations"]) == 3
    cidrs = [b["cidrBlock"] for b in cluster["masterAuthorizedNetworksConfig"]["cidrBlocks"]]
    assert cidrs and "0.0.0.0/0" not in cidrs
    for pool in prod.inputs("gcp:container/nodePool:NodePool"):
        node = pool["nodeConfig"]
        assert node["shieldedInstanceConfig"] == {
            "enableSecureBoot": True,
            "enableIntegrityMonitoring": True,
        }
        assert node["workloadMetadataConfig"] == {"mode": "GKE_METADATA"}
        assert node["serviceAccount"].startswith("shop-nodes@")


def test_images_are_built_from_the_repository(prod: StackRender) -> None:
    images = prod.inputs("docker-build:index:Image")
    assert {i["target"] for i in images} == {
        "service",
        "gateway",
        "postgres",
        "pgpool",
        "redis",
        "memcached",
    }
    assert {i["dockerfile"]["location"] for i in images} == {"services/Dockerfile"}


def test_each_outside_party_is_reached_with_its_key_only_where_its_callers_run(
    prod: StackRender,
) -> None:
    payment = pod_spec(prod.object("Deployment", "payment", "payments"))["containers"][0]
    env = {e["name"]: e["value"] for e in payment["env"]}
    assert env["STRIPE_URL"] == "https://api.stripe.com" and env["PAYPAL_URL"].startswith(
        "https://"
    )
    assert env["STRIPE_API_KEY_FILE"] == "/var/run/secrets/shop/stripe-api-key/key"
    mounted = {m["mountPath"] for m in payment["volumeMounts"]}
    assert {"/var/run/secrets/shop/stripe-api-key", "/var/run/secrets/shop/paypal-api-key"} <= (
        mounted
    )
    order = pod_spec(prod.object("Deployment", "order", "shop"))["containers"][0]
    order_env = {e["name"]: e.get("value") for e in order["env"]}
    assert order_env["WAREHOUSE_URL"] == "https://api.warehouse.example.com"
    assert order_env["WAREHOUSE_API_KEY_FILE"] == "/var/run/secrets/shop/warehouse-api-key/key"
    # Each key exists where its callers run and nowhere else, and no other service is wired
    # to a party it does not call.
    where = {
        (s["metadata"]["name"], s["metadata"]["namespace"])
        for s in prod.objects("Secret")
        if s["metadata"]["name"].endswith("-api-key")
    }
    assert where == {
        ("stripe-api-key", "payments"),
        ("paypal-api-key", "payments"),
        ("warehouse-api-key", "shop"),
    }
    assert set(prod.object("Secret", "warehouse-api-key", "shop")["stringData"]) == {"key"}
    assert "STRIPE_URL" not in order_env and "WAREHOUSE_URL" not in env
    for name in ("user", "product", "inventory"):
        other = pod_spec(prod.object("Deployment", name, "shop"))["containers"][0]
        assert not {e["name"] for e in other["env"]} & {"STRIPE_URL", "WAREHOUSE_URL"}

    # HTTPS out to the internet for the outside parties' callers, and for no other service.
    def https_out(name: str, namespace: str) -> bool:
        policy = prod.object("NetworkPolicy", f"allow-{name}", namespace)["spec"]
        return any(
            rule["ports"] == [{"protocol": "TCP", "port": 443}]
            and rule["to"][0].get("ipBlock", {}).get("cidr") == "0.0.0.0/0"
            for rule in policy.get("egress", [])
        )

    assert https_out("payment", "payments") and https_out("order", "shop")
    assert not any(https_out(name, "shop") for name in ("user", "product", "inventory"))


def test_the_user_service_mails_through_the_stacks_relay_with_keys_only_it_holds(
    prod: StackRender,
) -> None:
    user = pod_spec(prod.object("Deployment", "user", "shop"))["containers"][0]
    env = {e["name"]: e.get("value") for e in user["env"]}
    assert (env["SMTP_HOST"], env["SMTP_PORT"], env["SMTP_SECURITY"]) == (
        "smtp.sendgrid.net",
        "587",
        "starttls",
    )
    assert env["SMTP_USER"] == "apikey" and env["SMTP_FROM"].endswith(">")
    assert env["SMTP_PASSWORD_FILE"] == "/var/run/secrets/shop/smtp/password"
    assert env["RESET_KEY_FILE"] == "/var/run/secrets/shop/password-reset-key/key"
    mounted = {m["mountPath"] for m in user["volumeMounts"]}
    assert {"/var/run/secrets/shop/smtp", "/var/run/secrets/shop/password-reset-key"} <= mounted
    # The reset key exists where the user service runs and nowhere else, and no other
    # workload mounts it (it is what rebuilds a token from an event).
    assert {
        s["metadata"]["namespace"]
        for s in prod.objects("Secret")
        if s["metadata"]["name"] == "password-reset-key"
    } == {"shop"}
    for workload in workloads(prod):
        if workload["metadata"]["name"] != "user":
            volumes = pod_spec(workload).get("volumes", [])
            secrets = {v.get("secret", {}).get("secretName") for v in volumes}
            assert not secrets & {"password-reset-key", "smtp"}, workload["metadata"]["name"]
    # Out to the relay's port on the public internet, from the user pods only.
    egress = prod.object("NetworkPolicy", "allow-user", "shop")["spec"]["egress"]
    assert any(
        rule["ports"] == [{"protocol": "TCP", "port": 587}]
        and rule["to"][0]["ipBlock"]["cidr"] == "0.0.0.0/0"
        for rule in egress
    )
