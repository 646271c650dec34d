"""Each rule of the pack against a compliant resource and a violating one, asserting exactly
which rule fires; unknown values during preview; the served pack agrees with the verdict."""

from __future__ import annotations

from typing import Any

import pytest
from pulumi_policy import ResourceValidationArgs
from pulumi_policy.proxy import (
    UNKNOWN_NUMBER_VALUE,
    UNKNOWN_STRING_VALUE,
    UnknownValueError,
    unknown_checking_proxy,
)

from policies.rules import POLICIES
from policies.rules.workloads import pinned, restricted_pod_security
from policies.verdict import Finding, evaluate, mandatory, policy_config
from tests.policies import fixtures as fx

SEC = ("spec", "template", "spec", "containers", "0", "securityContext")


def findings(
    *resources: fx.Resource, config: dict[str, Any] | None = None, deny: bool = True
) -> list[Finding]:
    """The pack's findings; `deny` adds the default-deny policy each namespace needs anyway,
    so a test sees only the rule it is about."""
    namespaces = {r.inputs.get("metadata", {}).get("namespace") for r in resources} - {None}
    guards = [fx.default_deny(ns) for ns in sorted(namespaces)] if deny else []
    return evaluate([*resources, *guards], "test", config or {})


def fired(*resources: fx.Resource, config: dict[str, Any] | None = None) -> set[str]:
    return {f.rule for f in findings(*resources, config=config)}


def test_the_pack_has_every_rule_once_with_a_description() -> None:
    names = [p.name for p in POLICIES]
    assert len(names) == len(set(names))
    assert all(p.description and p.enforcement_level for p in POLICIES)
    advisory = {p.name for p in POLICIES if p.enforcement_level.value == "advisory"}
    assert advisory == {"monthly-cost-estimate", "required-labels"}


def test_a_compliant_namespace_raises_nothing() -> None:
    assert (
        findings(fx.deployment(), fx.hpa(), fx.pdb(), fx.default_deny(), fx.service("user")) == []
    )


# --- workload security --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ((*SEC, "runAsUser"), 0, "runAsUser must be >= 10000, got 0"),
        ((*SEC, "runAsUser"), 1000, "runAsUser must be >= 10000, got 1000"),
        ((*SEC, "runAsNonRoot"), False, "runAsNonRoot must be true"),
        ((*SEC, "readOnlyRootFilesystem"), False, "readOnlyRootFilesystem must be true"),
        ((*SEC, "allowPrivilegeEscalation"), True, "allowPrivilegeEscalation must be false"),
        ((*SEC, "capabilities"), {"drop": ["NET_RAW"]}, "capabilities must drop ALL"),
        (
            (*SEC, "capabilities"),
            {"drop": ["ALL"], "add": ["NET_ADMIN"]},
            "must not add capabilities",
        ),
        ((*SEC, "seccompProfile"), {"type": "Unconfined"}, "seccompProfile must be RuntimeDefault"),
        (
            ("spec", "template", "spec", "hostNetwork"),
            True,
            "host's namespaces (hostNetwork: true)",
        ),
        (("spec", "template", "spec", "hostPID"), True, "host's namespaces (hostPID: true)"),
        (
            ("spec", "template", "spec", "volumes"),
            [{"name": "root", "hostPath": {"path": "/"}}],
            "volume root mounts a hostPath",
        ),
    ],
)
def test_restricted_pod_security(path: tuple[str, ...], value: Any, message: str) -> None:
    result = findings(fx.modified(fx.deployment(), *path, value=value))
    assert {f.rule for f in result} == {"restricted-pod-security"}
    assert any(message in f.message for f in result), [f.message for f in result]
    assert all(f.level == "mandatory" for f in result)


def test_restricted_applies_to_cron_jobs_too() -> None:
    job = fx.cron_job(
        "backup",
        "data",
        fx.pod_spec("databases", containers=[fx.container("backup", securityContext={})]),
    )
    job.inputs["metadata"]["labels"]["tier"] = "data"
    assert "restricted-pod-security" in fired(job)
    good = fx.cron_job(
        "backup", "data", fx.pod_spec("databases", containers=[fx.container("backup")])
    )
    assert fired(good) == set()


def test_resources_required() -> None:
    lazy = fx.modified(
        fx.deployment(),
        "spec",
        "template",
        "spec",
        "containers",
        "0",
        "resources",
        value={"requests": {"cpu": "100m"}},
    )
    result = findings(lazy)
    assert {f.rule for f in result} == {"resources-required"}
    assert {f.message for f in result} == {
        "container user: no requests for memory",
        "container user: no limits for cpu, memory",
    }


@pytest.mark.parametrize(
    ("image", "ok"),
    [
        (fx.DIGEST, True),
        ("haproxy:2.6.12", True),
        ("registry.local:5000/app:v1.4.0", True),
        ("redis:latest", False),
        ("redis", False),
        ("registry.local:5000/app", False),
        ("postgres:15", False),
    ],
)
def test_images_pinned(image: str, ok: bool) -> None:
    assert pinned(image) is ok
    resource = fx.modified(
        fx.deployment(), "spec", "template", "spec", "containers", "0", "image", value=image
    )
    assert fired(resource) == (set() if ok else {"images-pinned"})


def test_no_plain_secrets_in_env() -> None:
    env_path = ("spec", "template", "spec", "containers", "0", "env")
    leaky = fx.modified(
        fx.deployment(), *env_path, value=[{"name": "DATABASE_PASSWORD", "value": "hunter2hunter2"}]
    )
    assert fired(leaky) == {"no-plain-secrets"}
    by_file = fx.modified(
        fx.deployment(),
        *env_path,
        value=[
            {
                "name": "DATABASE_PASSWORD_FILE",
                "value": "/var/run/secrets/shop/postgres-app/password",
            },
            {
                "name": "REDIS_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "redis-auth", "key": "password"}},
            },
        ],
    )
    assert fired(by_file) == set()


@pytest.mark.parametrize(
    ("data", "ok"),
    [
        ({"redis.conf": "port 6379\nrequirepass s3cr3t-value\n"}, False),
        ({"app.ini": "[db]\npassword = hunter2\n"}, False),
        ({"api-key": "abc"}, False),
        ({"pgpool.conf": "sr_check_password = ''\nport = 5432\n"}, True),
        ({"redis.conf": 'include "/etc/redis-auth/auth.conf"\n'}, True),
    ],
)
def test_no_plain_secrets_in_config_maps(data: dict[str, str], ok: bool) -> None:
    assert fired(fx.config_map(data)) == (set() if ok else {"no-plain-secrets"})


def test_data_and_cache_pods_stay_on_their_tainted_pools() -> None:
    on_apps = fx.statefulset("postgres", "data", "data", fx.pod_spec("apps"))
    result = findings(on_apps)
    assert {f.rule for f in result} == {"data-tier-on-tainted-pools"}
    assert any(
        "no toleration for the shop.platform/dedicated=databases taint" in f.message for f in result
    )
    wrong_pool = fx.statefulset("redis", "cache", "cache", fx.pod_spec("databases"))
    assert fired(wrong_pool) == {"data-tier-on-tainted-pools"}
    assert fired(fx.statefulset("postgres", "data", "data", fx.pod_spec("databases"))) == set()
    assert fired(fx.statefulset("redis", "cache", "cache", fx.pod_spec("caches"))) == set()


def test_payment_runs_on_its_dedicated_nodes() -> None:
    shared = fx.deployment("payment", "payments", spec=fx.pod_spec("apps"))
    assert fired(shared, fx.default_deny("payments")) == {"payment-on-dedicated-nodes"}
    dedicated = fx.deployment("payment", "payments", spec=fx.pod_spec("payments"))
    assert fired(dedicated, fx.default_deny("payments")) == set()


def test_hpa_bounds() -> None:
    upside_down = fx.hpa(low=8, high=4)
    assert fired(upside_down, fx.deployment(), fx.pdb(), fx.default_deny()) == {"hpa-bounds"}
    single = fx.hpa(low=1, high=4)
    assert fired(single, fx.deployment(), fx.pdb(), fx.default_deny()) == set()
    prod = policy_config("prod")
    result = findings(single, fx.deployment(), fx.pdb(), fx.default_deny(), config=prod)
    assert [f.message for f in result] == [
        "minReplicas must be >= 2 in this stack (got 1): one pod is no redundancy"
    ]


# --- network ------------------------------------------------------------------------------------


def test_every_namespace_with_workloads_denies_by_default() -> None:
    result = findings(fx.deployment(), deny=False)
    assert [(f.rule, f.message) for f in result] == [
        (
            "default-deny-network-policy",
            "namespace shop runs workloads but has no default-deny NetworkPolicy",
        )
    ]
    assert (result[0].resource_type, result[0].resource_name) == (
        "kubernetes:apps/v1:Deployment",
        "user-deployment",
    )
    allow_all = fx.modified(fx.default_deny(), "spec", "ingress", value=[{}])
    assert {f.rule for f in findings(fx.deployment(), allow_all, deny=False)} == {
        "default-deny-network-policy"
    }
    other_namespace = fx.default_deny("data")
    assert {f.rule for f in findings(fx.deployment(), other_namespace, deny=False)} == {
        "default-deny-network-policy"
    }
    assert findings(fx.deployment(), fx.default_deny(), deny=False) == []


def test_only_the_gateway_is_exposed() -> None:
    assert fired(fx.service("user", "LoadBalancer")) == {"only-gateway-exposed"}
    assert fired(fx.service("user", "NodePort")) == {"only-gateway-exposed"}
    assert fired(fx.service("gateway", "LoadBalancer")) == set()
    assert fired(fx.service("user")) == set()


# --- reliability --------------------------------------------------------------------------------


def test_autoscaled_deployments_have_a_pdb_and_no_replicas() -> None:
    pinned_count = fx.modified(fx.deployment(), "spec", "replicas", value=3)
    result = findings(pinned_count, fx.hpa(), fx.pdb(), fx.default_deny())
    assert [(f.rule, f.message) for f in result] == [
        (
            "autoscaled-workloads",
            "Deployment shop/user sets replicas although an HPA owns the count",
        )
    ]
    result = findings(fx.deployment(), fx.hpa(), fx.default_deny())
    assert [f.message for f in result] == [
        "Deployment shop/user is autoscaled but has no PodDisruptionBudget"
    ]
    other_pdb = fx.pdb("product")
    assert fired(fx.deployment(), fx.hpa(), other_pdb, fx.default_deny()) == {
        "autoscaled-workloads"
    }


# --- cluster and data ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("privateClusterConfig", {"enablePrivateNodes": False}, "nodes must be private"),
        ("workloadIdentityConfig", {}, "Workload Identity must be on"),
        ("enableShieldedNodes", False, "shielded nodes must be on"),
        ("removeDefaultNodePool", False, "the default node pool must be removed"),
        ("enableLegacyAbac", True, "legacy ABAC must be off"),
        (
            "masterAuthorizedNetworksConfig",
            {"cidrBlocks": [{"displayName": "anyone", "cidrBlock": "0.0.0.0/0"}]},
            "master authorized network 'anyone' is open to the internet (0.0.0.0/0)",
        ),
    ],
)
def test_gke_cluster_hardened(field: str, value: Any, message: str) -> None:
    result = findings(fx.modified(fx.cluster(), field, value=value))
    assert [f.rule for f in result] == ["gke-cluster-hardened"]
    assert result[0].message.startswith(message)


def test_node_pools_managed() -> None:
    assert fired(fx.cluster(), fx.node_pool()) == set()
    unmanaged = fx.node_pool(management={"autoRepair": False, "autoUpgrade": True})
    assert [f.message for f in findings(fx.cluster(), unmanaged)] == [
        "node pool must auto-repair (management.autoRepair)"
    ]


def test_buckets_private() -> None:
    assert fired(fx.bucket()) == set()
    assert fired(fx.bucket(uniformBucketLevelAccess=False)) == {"buckets-private"}
    assert fired(fx.bucket(publicAccessPrevention="inherited")) == {"buckets-private"}


# --- cost and hygiene (advisory) ----------------------------------------------------------------


def test_cost_estimate_against_the_budget() -> None:
    within = [fx.cluster(), fx.node_pool(high=9), fx.node_pool("databases", "c2-standard-8", 3, 4)]
    assert fired(*within) == set()
    over = [*within, fx.node_pool("caches", "c2-standard-16", 3, 6)]
    result = findings(*over)
    assert [(f.rule, f.level) for f in result] == [("monthly-cost-estimate", "advisory")]
    assert "above the $4,000 budget" in result[0].message
    unpriced = findings(fx.cluster(), fx.node_pool(machine="a3-megagpu-8g"))
    assert any("no list price for a3-megagpu-8g" in f.message for f in unpriced)
    assert mandatory(unpriced) == []


def test_required_labels() -> None:
    unlabelled = fx.modified(fx.config_map({}), "metadata", "labels", value={"app": "x"})
    result = findings(unlabelled)
    assert [(f.rule, f.level, f.message) for f in result] == [
        ("required-labels", "advisory", "missing labels: tier, environment, cost-center")
    ]
    assert fired(fx.bucket(labels={})) == {"required-labels"}


def test_enforcement_levels_follow_the_stack_config() -> None:
    config = {"required-labels": "mandatory", "images-pinned": {"enforcementLevel": "disabled"}}
    unlabelled = fx.modified(fx.config_map({}), "metadata", "labels", value={})
    latest = fx.modified(
        fx.deployment(), "spec", "template", "spec", "containers", "0", "image", value="x:latest"
    )
    result = findings(unlabelled, latest, fx.default_deny(), config=config)
    assert {(f.rule, f.level) for f in result} == {("required-labels", "mandatory")}


# --- unknown values during preview --------------------------------------------------------------


def test_an_unknown_value_is_reported_as_unverified_not_passed() -> None:
    unknown_uid = fx.modified(fx.deployment(), *SEC, "runAsUser", value=UNKNOWN_NUMBER_VALUE)
    result = findings(unknown_uid, fx.default_deny())
    assert [(f.rule, f.level) for f in result] == [("restricted-pod-security", "advisory")]
    assert "can't run policy during preview" in result[0].message
    assert "runAsUser" in result[0].message


def test_an_unknown_image_is_not_a_pass_either() -> None:
    unknown = fx.modified(
        fx.deployment(),
        "spec",
        "template",
        "spec",
        "containers",
        "0",
        "image",
        value=UNKNOWN_STRING_VALUE,
    )
    result = findings(unknown, fx.default_deny())
    assert [(f.rule, f.level) for f in result] == [("images-pinned", "advisory")]


def test_rules_let_the_engine_see_unknowns() -> None:
    """A rule must not swallow an unknown (that would be a silent pass): the engine catches it."""
    props = fx.modified(
        fx.deployment(), *SEC, "readOnlyRootFilesystem", value=UNKNOWN_STRING_VALUE
    ).inputs
    args = ResourceValidationArgs(
        "kubernetes:apps/v1:Deployment",
        unknown_checking_proxy(props),
        "urn",
        "user",
        None,
        None,  # type: ignore[arg-type]
    )
    with pytest.raises(UnknownValueError):
        restricted_pod_security.validate(args, lambda message, urn=None: None)


def test_the_pack_checks_the_names_the_components_write() -> None:
    """The pack is self-contained (it runs as its own program): it keeps its own copies of
    the label and taint names, and this holds them equal to the components'."""
    from components import cluster, kube
    from policies.rules import cost, workloads

    assert cost.BUDGET_LABEL == cluster.BUDGET_LABEL
    assert (workloads.POOL_LABEL, workloads.DEDICATED_TAINT) == (
        kube.POOL_LABEL,
        kube.DEDICATED_TAINT,
    )
